"""Lake's official one-shot runs as a task source, on a synthetic all_runs.zip of the same layout (no network):
verification, the class_labels.txt pairing, polarity, conversion, the test-only rule, the download helper."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.config import load_config
from fastadapt.config.build import SourceRequest, task_sources
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.data.classes import conform_images
from fastadapt.data.lake import SHA256, LakeRuns, content_digest, download_lake_runs, lake_runs, load_lake_runs
from helpers import one_line_error

SIDE = 105
TEST_MARK = (SIDE - 1, SIDE - 1)  # an ink pixel only the test drawings have


def _png(run: int, cls: int, test: bool) -> bytes:
    """Black ink on white, mode "1" as the official runs: ink at (row = class, column = run), plus TEST_MARK for a test
    drawing, so a loaded image says which run, class and kind it is."""
    white = np.ones((SIDE, SIDE), dtype=bool)
    white[cls, run] = False
    if test:
        white[TEST_MARK] = False
    buf = io.BytesIO()
    Image.fromarray(white).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _runs_files() -> tuple[dict[str, bytes], list[list[int]]]:
    """The layout of all_runs.zip: runNN/training/classCC.png, runNN/test/itemII.png and runNN/class_labels.txt
    pairing each test item with its training class (a seeded shuffle per run)."""
    files, items = {}, []
    for r in range(1, 21):
        item_of = list(range(1, 21))
        random.Random(r).shuffle(item_of)  # class c's test drawing is item item_of[c - 1]
        items.append(item_of)
        lines = []
        for c in range(1, 21):
            files[f"run{r:02d}/training/class{c:02d}.png"] = _png(r, c, False)
            files[f"run{r:02d}/test/item{item_of[c - 1]:02d}.png"] = _png(r, c, True)
        for i in range(1, 21):
            lines.append(f"run{r:02d}/test/item{i:02d}.png run{r:02d}/training/class{item_of.index(i) + 1:02d}.png")
        files[f"run{r:02d}/class_labels.txt"] = ("\n".join(lines) + "\n").encode()
    return files, items


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(zip path, its SHA-256, extracted folder, class -> test item per run)."""
    root = tmp_path_factory.mktemp("lake")
    files, items = _runs_files()
    archive = root / "all_runs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    folder = root / "extracted"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest(), folder, items


def _request(archive: Path, sha256: str | None, **kw) -> SourceRequest:
    fields = dict(part="test", ways=20, shots=1, queries=1, seed=0, argument=str(archive), role="test")
    fields["options"] = {"sha256": sha256} if sha256 else {}
    fields.update(kw)
    return SourceRequest(**fields)


def _ink(x: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(p) for p in torch.nonzero(x > 0.5).tolist()}


def test_episode_i_is_run_i_plus_1_with_the_class_labels_pairing_and_bright_ink(runs):
    archive, digest, _, items = runs
    source = lake_runs(_request(archive, digest, image_size=SIDE))
    batches = list(source.fixed(20, batch_size=7))
    assert [b.num_tasks for b in batches] == [7, 7, 6]
    sx = torch.cat([b.support_x for b in batches])
    qx = torch.cat([b.query_x for b in batches])
    assert sx.shape == qx.shape == (20, 20, 1, SIDE, SIDE)
    for b in batches:
        assert b.support_y.tolist() == b.query_y.tolist() == [list(range(20))] * b.num_tasks
    for r in range(20):
        for c in range(20):
            assert _ink(sx[r, c, 0]) == {(c + 1, r + 1)}  # training/class{c+1}.png of run r+1, ink = 1.0
            assert _ink(qx[r, c, 0]) == {(c + 1, r + 1), TEST_MARK}  # the test item class_labels.txt pairs with it
    assert float(sx.max()) == 1.0 and float(sx.min()) == 0.0 and float(sx.mean()) < 0.01  # ink bright, ground dark
    assert source.items == items


def test_the_extracted_folder_loads_the_same_runs_as_the_zip(runs):
    archive, digest, folder, _ = runs
    a, items_a = load_lake_runs(archive, digest)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    b, items_b = load_lake_runs(folder, content_digest(files))
    assert torch.equal(a.data, b.data) and a.names == b.names and items_a == items_b
    assert a.names[:2] == ("run01/class01", "run01/class02") and a.num_classes == 400


def test_another_archive_is_a_one_line_error_naming_the_expected_digest(runs, tmp_path):
    archive, digest, folder, _ = runs
    assert SHA256 in one_line_error(load_lake_runs, archive)  # the official digest by default
    msg = one_line_error(load_lake_runs, folder)
    assert "content digest" in msg and "expected" in msg
    assert "expected " + "0" * 64 in one_line_error(load_lake_runs, archive, "0" * 64)


def test_a_missing_pairing_is_refused(runs, tmp_path):
    archive, _, _, _ = runs
    bad = tmp_path / "all_runs.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "run03/class_labels.txt":
                data = b"\n".join(data.splitlines()[:-1])  # one test item left unpaired
            dst.writestr(info, data)
    msg = one_line_error(load_lake_runs, bad, hashlib.sha256(bad.read_bytes()).hexdigest())
    assert "run03/class_labels.txt" in msg


def test_images_are_converted_by_the_engines_one_rule(runs):
    archive, digest, _, _ = runs
    full, _ = load_lake_runs(archive, digest)
    source = lake_runs(_request(archive, digest, image_size=28, channels=3))
    batch = source.sample_tasks(-1, 4, 1)
    assert batch.support_x.shape == (1, 20, 3, 28, 28)
    want = conform_images(full, 28, 3).data.view(20, 20, 2, 3, 28, 28)[4].float() / 255
    torch.testing.assert_close(batch.support_x[0], want[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(batch.query_x[0], want[:, 1], rtol=0, atol=0)


def test_other_parts_roles_shapes_and_more_than_20_episodes_are_refused(runs):
    archive, digest, _, _ = runs
    assert "background alphabets" in one_line_error(lake_runs, _request(archive, digest, part="val", role="val"))
    assert "test set" in one_line_error(lake_runs, _request(archive, digest, role="train"))  # part test, for training
    assert "data.test_ways=20" in one_line_error(lake_runs, _request(archive, digest, ways=5))
    assert "data.test_queries=1" in one_line_error(lake_runs, _request(archive, digest, queries=15))
    assert "not an option" in one_line_error(lake_runs, _request(archive, None, options={"verify": False}))
    assert "names no file" in one_line_error(lake_runs, _request("", digest))
    source = lake_runs(_request(archive, digest, image_size=28))
    assert "eval.test_episodes=20" in one_line_error(lambda: list(source.fixed(21)))
    assert "there are 20" in one_line_error(source.sample_tasks, 0, 19, 2)


def test_the_engine_builds_the_runs_as_a_test_source(runs):
    archive, digest, _, _ = runs
    cfg = load_config(
        "protonet-quick",
        [
            f"data.test_dataset=lake-runs:{archive}",
            "data.test_part=test",
            "data.test_ways=20",
            "data.test_shots=1",
            "data.test_queries=1",
            "eval.test_episodes=20",
            f'data.test_options={{sha256="{digest}"}}',
        ],
    )
    assert "lake-runs" in TASK_SOURCES
    sources = task_sources(cfg, tests_only=True, input_shape=(1, 28, 28))
    (source,) = sources.tests.values()
    assert isinstance(source, LakeRuns)
    assert source.sample_tasks(-1, 0, 1).support_x.shape == (1, 20, 1, 28, 28)  # the model's input


def test_download_checks_the_digest_and_keeps_nothing_on_a_mismatch(runs, tmp_path):
    archive, digest, _, _ = runs
    url = archive.as_uri()  # file://: the helper's path without a network
    got = download_lake_runs(tmp_path / "a", url=url, sha256=digest)
    assert got == tmp_path / "a" / "all_runs.zip" and got.read_bytes() == archive.read_bytes()
    assert download_lake_runs(tmp_path / "a", url="file:///nonexistent", sha256=digest) == got  # present: not fetched
    assert "expected " + SHA256 in one_line_error(download_lake_runs, tmp_path / "b", url=url)
    assert not (tmp_path / "b" / "all_runs.zip").exists()


def test_the_official_runs_pair_the_same_characters_when_present():
    """With the official all_runs.zip and the packed originals beside this checkout: every run is 20 characters of one
    evaluation alphabet, its training drawings by one drawer and its test drawings by another, and class_labels.txt
    pairs drawings of the same character (found by exact pixels among the originals)."""
    work = Path(__file__).resolve().parents[2]
    zip_path, packed = work / "lake" / "all_runs.zip", work / "shared" / "data" / "omniglot" / "images_evaluation.npz"
    if not zip_path.exists() or not packed.exists():
        pytest.skip("the official runs or the packed originals are not beside this checkout")
    data, _ = load_lake_runs(zip_path)  # the official digest
    with np.load(packed) as z:
        ink = (1 - np.unpackbits(z["images"], axis=-1, count=SIDE)) * np.uint8(255)
        names = [str(n) for n in z["characters"]]
    where = {ink[i, k].tobytes(): (names[i], k) for i in range(len(names)) for k in range(20)}
    x = data.data.view(20, 20, 2, SIDE, SIDE).numpy()
    for r in range(20):
        support = [where[x[r, c, 0].tobytes()] for c in range(20)]
        query = [where[x[r, c, 1].tobytes()] for c in range(20)]
        assert [s[0] for s in support] == [q[0] for q in query]
        assert len({s[0] for s in support}) == 20 and len({s[0].split("/")[0] for s in support}) == 1
        assert len({s[1] for s in support}) == 1 and len({q[1] for q in query}) == 1
        assert support[0][1] != query[0][1]


def test_a_run_trained_on_omniglot_tests_on_the_runs_with_test_options_only(runs, tmp_path):
    archive, digest, _, _ = runs
    overrides = [
        "data.split=lake",
        "data.train_part=background_train",
        "data.val_part=",
        "data.test_part=test",
        "data.options={ train_rotations = true }",  # the training source's: never passed to the runs
        f"data.test_dataset=lake-runs:{archive}",
        f'data.test_options={{ sha256 = "{digest}" }}',
        "data.test_ways=20",
        "data.test_shots=1",
        "data.test_queries=1",
    ]
    tests = task_sources(load_config("protonet-quick", overrides)).tests
    assert next(iter(tests.values())).sample_tasks(-1, 0, 1).support_x.shape[1] == 20
    bad = [*overrides[:-4], "data.test_options={ sizes = 84 }", *overrides[-3:]]
    assert "data.options.sizes is not an option of lake-runs" in one_line_error(
        task_sources, load_config("protonet-quick", bad)
    )
