"""The app in a real browser: headless Chromium (Debian's ``chromium``, installed by .ci/run) driven by Playwright
for Python, pointed at the system browser (no browser download). Traffic goes to 127.0.0.1 only.

A person creates three classes, draws one example of each on the canvas, sees a prediction for a new
drawing, labels an example the app proposes; the server is killed and started again, and everything
is still there. Screenshots are saved under the test's tmp_path; ``FASTADAPT_SCREENSHOTS=docs/img``
also copies them there (regenerate them deliberately).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CHROMIUM, needs_package, smoke_run

pytestmark = needs_package("chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python: pip install 'fastadapt[test]'")

from PIL import Image  # noqa: E402

from fastadapt.apps.serve import free_port  # noqa: E402

SHAPES = {  # strokes in canvas pixels (280 x 280): what the person draws for each class
    "ring": [
        [(140 + 80 * math.cos(t / 12 * 2 * math.pi), 140 + 80 * math.sin(t / 12 * 2 * math.pi)) for t in range(13)]
    ],
    "bar": [[(140, 40), (140, 240)]],
    "cross": [[(60, 60), (220, 220)], [(220, 60), (60, 220)]],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder served by its relative name ``runs/proto`` (the app's header, and the screenshots, show it)."""
    return smoke_run(tmp_path_factory.mktemp("browser") / "runs" / "proto")


def serve(run_dir, folder, port):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastadapt.cli", "serve", "runs/proto", "--port", str(port), "--dir", str(folder)],
        cwd=run_dir.parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    assert f"http://127.0.0.1:{port}/" in line, line
    return proc


def stop(proc, sig=signal.SIGKILL):
    proc.send_signal(sig)
    proc.wait(timeout=30)
    proc.stdout.close()


def draw(page, strokes):
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        (x0, y0), rest = stroke[0], stroke[1:]
        page.mouse.move(box["x"] + x0, box["y"] + y0)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
        page.mouse.up()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    for _ in range(100):  # the server may still be loading its run
        try:
            page.goto(url)
            break
        except sync_api.Error:
            time.sleep(0.3)
    page.wait_for_selector("#run-info:not(:empty)")
    return page


def test_draw_three_classes_predict_label_a_proposal_restart_and_find_everything(run_dir, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    shots = []
    proc = serve(run_dir, tmp_path / "app", port)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = open_page(browser, url)
            for name, strokes in SHAPES.items():
                page.fill("#class-name", name)
                page.click("#add-class")
                cls = page.locator(".class", has=page.locator(".name", has_text=name))
                cls.wait_for()
                draw(page, strokes)
                cls.locator(".add-drawing").click()
                cls.locator(".thumbs img").first.wait_for()
            draw(page, SHAPES["ring"])  # a new drawing: the prediction appears live
            page.wait_for_selector("#predicted:not(:empty)")
            predicted = page.inner_text("#predicted")
            assert any(predicted.startswith(n) for n in SHAPES) and "%" in predicted
            assert page.locator("#probabilities .bar").count() == 3
            assert "prototype" in page.inner_text("#explanation")
            shots.append(tmp_path / "serve_predict.png")
            page.screenshot(path=shots[-1])

            page.click("#propose")
            first = page.locator(".proposal").first
            first.wait_for()
            pool_index = first.get_attribute("data-pool")
            first.locator("select").select_option(label="bar")
            first.locator(".label").click()
            bar = page.locator(".class", has=page.locator(".name", has_text="bar"))
            bar.locator(".thumbs img").nth(1).wait_for()
            shots.append(tmp_path / "serve_teach.png")
            page.screenshot(path=shots[-1])

            stop(proc)  # kill -9: nothing acknowledged may be lost
            proc = serve(run_dir, tmp_path / "app", port)
            page = open_page(browser, url)
            page.locator(".class").nth(2).wait_for()
            names = page.locator(".class .name").all_inner_texts()
            counts = [
                page.locator(".class", has=page.locator(".name", has_text=n)).locator(".thumbs img").count()
                for n in SHAPES
            ]
            assert names == list(SHAPES) and counts == [1, 2, 1]
            assert "1 labelled by you" in page.inner_text("#pool-info")
            page.locator(".proposal").nth(2).wait_for()  # the open round goes on with its 3 unlabelled proposals
            assert (
                page.locator(".proposal").count() == 3
                and page.locator(f'.proposal[data-pool="{pool_index}"]').count() == 0
            )
            shots.append(tmp_path / "serve_restart.png")
            page.screenshot(path=shots[-1])

            evil = '<img src=x onerror="window.pwned=1">'  # a class name is text, never markup
            page.fill("#class-name", evil)
            page.click("#add-class")
            page.locator(".class").nth(3).wait_for()
            assert page.locator(".class .name").nth(3).inner_text() == evil
            assert page.locator(".class .name img").count() == 0 and page.evaluate("window.pwned") is None
        finally:
            browser.close()
            stop(proc, signal.SIGTERM)
    for shot in shots:
        assert shot.stat().st_size > 10_000
    target = os.environ.get("FASTADAPT_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in shots:  # 64 colours: small files for the docs
            with Image.open(shot) as im:
                im.convert("RGB").quantize(64).save(Path(target) / shot.name, optimize=True)
