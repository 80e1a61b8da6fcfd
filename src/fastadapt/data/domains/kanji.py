"""KanjiVG's stroke files as a domain: a kanji is a class, seeded variations of its strokes its examples.

Source: PyPI ``kanjivg`` (KanjiVG, Ulrich Apel, CC BY-SA 3.0, https://kanjivg.tagaini.net); its SVG files are
rendered on the user's machine into the cache of :mod:`.cache`, never committed or shipped. A class is a file
``kanji/<code point>.svg`` of a CJK ideograph (variant files, with a ``-`` in the name, and other code points are
left out); each file is checked against the package's RECORD. The renderer is this module's own (M/m, C/c,
S/s, L/l, H/h, V/v, Z/z path commands, Bézier curves sampled into polylines drawn with Pillow).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fastadapt.core import cancel
from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset
from fastadapt.data.domains.cache import cached, split_classes

PACKAGE = "kanjivg"
INSTALL = "pip install kanjivg"
REINSTALL = "pip install --force-reinstall kanjivg"
RENDER = "r1"  # the renderer's version, part of the cache key: change it when the images change
CANVAS = 109  # KanjiVG's viewBox is 0 0 109 109
# release -> (kanji/*.svg files in its RECORD, classes, SHA-256 over the classes' sorted names and bytes)
KNOWN = {"20260714": (11662, 6431, "32176b632b955dd30b4d5baec2bcd581caba57c7db9b8f4e43017f38624cd37c")}
IDEOGRAPHS = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))  # CJK (ext. A-G, compat.)

Source = tuple[str, bytes]  # (class name: the kanji, the SVG file's bytes)


def is_ideograph(code: int) -> bool:
    """Whether code point ``code`` is a CJK unified or compatibility ideograph."""
    return any(lo <= code <= hi for lo, hi in IDEOGRAPHS)


def class_code(filename: str) -> int | None:
    """The code point of a KanjiVG file ``<hex>.svg`` that is a class, None for a variant (``-``) or other file."""
    stem, _, ext = filename.partition(".")
    if ext != "svg" or "-" in stem or not re.fullmatch(r"[0-9a-f]{4,6}", stem):
        return None
    code = int(stem, 16)
    return code if is_ideograph(code) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def kanji_sources(root: str | Path | None = None, limit: int | None = None) -> tuple[str, str, list[Source]]:
    """``(release, SHA-256, sources)``: the classes' files in code-point order (the first ``limit`` of them),
    each checked against the installed package's RECORD (``root``: a folder of KanjiVG SVG files instead, with
    no RECORD to check against). The SHA-256 covers the sorted file names and bytes of the files used."""
    if root is not None:
        folder = Path(root)
        folder = folder / "kanji" if (folder / "kanji").is_dir() else folder
        if not folder.is_dir():
            raise DataError(f"kanji: root={root} is not a folder; pass a folder of KanjiVG SVG files (or no root)")
        names, record, release = sorted(p.name for p in folder.iterdir()), None, f"folder-{folder.name}"
    else:
        try:
            dist = metadata.distribution(PACKAGE)
        except metadata.PackageNotFoundError:
            raise DataError(f"kanji needs KanjiVG's stroke files, the PyPI package {PACKAGE}: {INSTALL}") from None
        record = {
            str(f)[len("kanji/") :]: f.hash.value if f.hash else ""
            for f in dist.files or ()
            if str(f).startswith("kanji/") and str(f).endswith(".svg")
        }
        release = dist.version
        folder = Path(str(dist.locate_file("kanji")))
        names = sorted(record)
        present = sum(1 for n in names if (folder / n).is_file())
        if not names or present != len(names):
            raise DataError(
                f"kanjivg {release}: {len(names)} kanji/*.svg files in its RECORD, {present} in {folder}; {REINSTALL}"
            )
        files, _, _ = KNOWN.get(release, (len(names), 0, ""))
        if len(names) != files:
            raise DataError(f"kanjivg {release} lists {len(names)} kanji/*.svg files, not {files}; {REINSTALL}")
    picked = sorted((code, name) for name in names if (code := class_code(name)) is not None)
    if not picked:
        raise DataError(f"kanji: no KanjiVG file of a CJK ideograph (<hex code point>.svg) in {folder}")
    picked = picked[:limit] if limit is not None else picked
    digest, sources = hashlib.sha256(), []
    for code, name in sorted(picked, key=lambda p: p[1]):
        try:
            data = (folder / name).read_bytes()
        except OSError as e:
            raise DataError(f"kanji: cannot read {folder / name} ({e.strerror or e})") from None
        if record is not None and _b64(data) != record[name]:
            raise DataError(f"kanjivg {release}: kanji/{name} does not match its RECORD checksum; {REINSTALL}")
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
        sources.append((chr(code), data))
    known = KNOWN.get(release)
    if record is not None and limit is None and known and known[2] and (len(sources), digest.hexdigest()) != known[1:]:
        raise DataError(
            f"kanjivg {release}: its {len(sources)} kanji files do not match the known release; {REINSTALL}"
        )
    return release, digest.hexdigest(), sorted(sources, key=lambda s: ord(s[0]))


# --- the SVG path renderer ---------------------------------------------------------------------------------------

_PATH_D = re.compile(r"<path\b[^>]*?\sd=\"([^\"]*)\"")
_TOKEN = re.compile(r"[MmCcSsLlHhVvZz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_ALLOWED = re.compile(r"[\sMmCcSsLlHhVvZz0-9eE.,+-]*")
_ARGS = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4}


def _line(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([a, a + (b - a) / 3, a + 2 * (b - a) / 3, b])


def parse_path(d: str) -> list[np.ndarray]:
    """The subpaths of SVG path data ``d``, each an array of cubic Bézier segments ``[n, 4, 2]`` (lines as straight
    cubics); a command or number it does not know raises ValueError."""
    if not _ALLOWED.fullmatch(d):
        raise ValueError(f"path data with an unknown command: {d[:40]!r}")
    tokens = _TOKEN.findall(d)
    subpaths: list[np.ndarray] = []
    segs: list[np.ndarray] = []
    pos = start = np.zeros(2)
    ctrl: np.ndarray | None = None  # the last segment's second control point (for S)
    cmd, i = "", 0

    def finish() -> None:
        if segs:
            subpaths.append(np.stack(segs))
            segs.clear()

    while i < len(tokens):
        if tokens[i].isalpha():
            cmd, i = tokens[i], i + 1
            if cmd in "Zz":
                if np.any(pos != start):
                    segs.append(_line(pos, start))
                finish()
                pos, ctrl, cmd = start, None, ""
            continue
        if not cmd:
            raise ValueError(f"path data without a command before {tokens[i]!r}")
        up, k = cmd.upper(), _ARGS[cmd.upper()]
        args = tokens[i : i + k]
        if len(args) < k or any(a.isalpha() for a in args):
            raise ValueError(f"command {cmd} with too few numbers")
        v, i = np.array(args, dtype=np.float64), i + k
        base = pos if cmd.islower() else np.zeros(2)
        if up == "M":
            finish()
            pos = start = base + v
            cmd, ctrl = ("l" if cmd == "m" else "L"), None
        elif up in "LHV":
            end = base + v if up == "L" else pos.copy()
            if up != "L":
                axis = 0 if up == "H" else 1
                end[axis] = base[axis] + v[0]
            segs.append(_line(pos, end))
            pos, ctrl = end, None
        else:
            pts = base + v.reshape(-1, 2)
            first = pts[0] if up == "C" else (2 * pos - ctrl if ctrl is not None else pos)
            c2, end = pts[-2], pts[-1]
            segs.append(np.stack([pos, first, c2, end]))
            pos, ctrl = end, c2
    finish()
    return subpaths


def parse_kanji(svg: bytes) -> list[list[np.ndarray]]:
    """The strokes of a KanjiVG file, in order: each a list of subpaths (see :func:`parse_path`)."""
    strokes = [parse_path(d) for d in _PATH_D.findall(svg.decode("utf-8"))]
    strokes = [s for s in strokes if s]
    if not strokes:
        raise ValueError("no stroke")
    return strokes


_BERNSTEIN: dict[int, np.ndarray] = {}


def _bernstein(n: int) -> np.ndarray:
    """The cubic Bernstein weights ``[n, 4]`` at t = 1/n, 2/n, ..., 1."""
    if n not in _BERNSTEIN:
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        u = 1 - t
        _BERNSTEIN[n] = np.concatenate([u**3, 3 * u * u * t, 3 * u * t * t, t**3], axis=1)
    return _BERNSTEIN[n]


def _sample(segs: np.ndarray, step: float = 4.5) -> np.ndarray:
    """Points along cubic segments ``[n, 4, 2]``, about one every ``step`` px of the control polygon (at most
    0.2 px off the curve at 28x28)."""
    lengths = np.sqrt((np.diff(segs, axis=1) ** 2).sum(-1)).sum(-1)
    counts = np.clip(np.ceil(lengths / step), 2, 24).astype(int).tolist()
    return np.concatenate([segs[0, :1]] + [_bernstein(n) @ p for n, p in zip(counts, segs)])


def _variation(rng: np.random.Generator, strokes: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The strokes moved by a small affine map of the whole character, then a small one of each stroke plus noise
    on each Bézier control point (the end points stay joined), kept inside the canvas."""
    flat = [sp for st in strokes for sp in st]
    owner = np.repeat(np.arange(len(strokes)), [len(sp) for st in strokes for sp in st])  # stroke of each segment
    p = np.concatenate(flat)  # [S, 4, 2]
    sums = np.zeros((len(strokes), 2))
    np.add.at(sums, owner, p.sum(1))
    centre = (sums / np.bincount(owner, minlength=len(strokes))[:, None] / 4)[owner][:, None]
    local = (np.eye(2) + rng.normal(0, 0.03, (len(strokes), 2, 2)))[owner]
    p = np.einsum("sij,skj->ski", local, p - centre) + centre + rng.normal(0, 1.0, (len(strokes), 2))[owner][:, None]
    p[:, 1:3] += rng.normal(0, 0.8, (len(p), 2, 2))  # interior control points only
    a, s, r, sh = rng.uniform(-0.1, 0.1), rng.uniform(0.86, 1.0), rng.uniform(0.93, 1.07), rng.uniform(-0.12, 0.12)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = CANVAS / 2
    p = (p - c) @ (rot @ np.array([[s * r, sh], [0.0, s / r]])).T + c + rng.uniform(-5, 5, 2)
    lo, hi = p.reshape(-1, 2).min(0), p.reshape(-1, 2).max(0)
    margin = 6.0
    fit = min(1.0, (CANVAS - 2 * margin) / max(float((hi - lo).max()), 1e-6))
    mid = (lo + hi) / 2
    p = (p - mid) * fit + np.clip(mid, margin + fit * (mid - lo), CANVAS - margin - fit * (hi - mid))
    out, i = [], 0
    for st in strokes:
        out.append([p[i + j : i + j + len(sp)] for j, sp in zip(np.cumsum([0] + [len(sp) for sp in st[:-1]]), st)])
        i += sum(len(sp) for sp in st)
    return out


def render_kanji(strokes: list[list[np.ndarray]], rng: np.random.Generator | None, size: int = 28) -> np.ndarray:
    """One uint8 ``[size, size]`` image of ``strokes`` (white on black): varied by ``rng`` (None: as drawn, at
    KanjiVG's width 3), drawn on a 109x109 canvas (larger for ``size`` > 109) and resized with antialiasing."""
    scale = max(1.0, size / CANVAS)
    side = int(round(CANVAS * scale))
    if rng is not None:
        width, strokes = int(rng.integers(4, 8)), _variation(rng, strokes)
    else:
        width = 3
    width = max(1, int(round(width * scale)))
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    r = (width - 1) / 2
    for stroke in strokes:
        for sp in stroke:
            xy = (_sample(sp, 4.5 / scale) * scale).tolist()
            if len(xy) > 1:
                draw.line([tuple(p) for p in xy], fill=255, width=width, joint="curve")
            for x, y in (xy[0], xy[-1]):  # round caps
                draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    if side != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def render_all(
    sources: Sequence[Source], size: int = 28, examples: int = 10
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 [M, 1, size, size], labels, class names)``: ``examples`` renderings of each source, seeded
    by its code point and the example's index (so independent of which others are built); a file that cannot be
    parsed or drawn is skipped and counted (the count is printed)."""
    from tqdm import tqdm

    images = np.zeros((len(sources) * examples, 1, size, size), dtype=np.uint8)
    names: list[str] = []
    skipped = 0
    bar = tqdm(sources, desc="kanji: rendering KanjiVG", unit="kanji", disable=len(sources) < 300, leave=False)
    for char, data in bar:
        cancel.check()  # a stop asked for (a command's signal): abandon the rendering, nothing is cached
        try:
            strokes = parse_kanji(data)
            block = [render_kanji(strokes, np.random.default_rng([ord(char), e]), size) for e in range(examples)]
        except (ValueError, UnicodeDecodeError, OverflowError, FloatingPointError):
            skipped += 1
            continue
        images[len(names) * examples : (len(names) + 1) * examples, 0] = np.stack(block)
        names.append(char)
    bar.close()
    if skipped:
        tqdm.write(
            f"kanji: {skipped} of {len(sources)} KanjiVG files could not be rendered and were skipped", file=sys.stderr
        )
    labels = np.repeat(np.arange(len(names), dtype=np.int64), examples)
    return images[: len(labels)], labels, names


def load_kanji(
    part: str = "train",
    root: str | Path | None = None,
    cache: str | Path | None = None,
    size: int = 28,
    examples: int = 10,
    limit: int | None = None,
) -> ClassDataset:
    """KanjiVG's kanji (PyPI ``kanjivg``, CC BY-SA 3.0) as uint8 ``[M, 1, size, size]``, ``examples`` a class.

    Rendered once (a minute or so for all 6431 kanji) into ``cache`` (default :func:`.cache.cache_root`);
    ``part`` (train, val, test) holds 70 / 15 / 15 % of the classes (by a hash of the kanji). ``root``: a
    folder of KanjiVG SVG files instead of the installed package; ``limit``: the first ``limit`` kanji by
    code point only (for quick tests).
    """
    for key, value, low in (("size", size, 8), ("examples", examples, 1), ("limit", limit, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise DataError(f"kanji: {key}={value!r}; it must be an integer >= {low}")
    release, digest, sources = kanji_sources(root, limit)
    version = f"{release}-{digest[:16]}-{size}px-{examples}x{f'-first{limit}' if limit else ''}-{RENDER}"
    images, labels, names = cached("kanji", version, lambda: render_all(sources, size, examples), cache)
    keep = split_classes(names, part)
    if not keep:
        raise DataError(f"kanji: part {part!r} of {len(names)} kanji has no class; raise limit (now {limit})")
    mask = np.isin(labels, keep)
    return ClassDataset.from_arrays(
        images[mask], labels[mask], name=f"kanji-{part}", class_names=[names[i] for i in keep]
    )


def kanji(request: Any) -> ClassDataset:
    """KanjiVG's kanji rendered on this machine (PyPI kanjivg, CC BY-SA 3.0): a kanji a class, seeded variations
    its examples. ``data.options``: ``size`` (default ``data.image_size``), ``examples`` (10), ``limit`` (the
    first N kanji), ``root`` (a folder of KanjiVG SVG files), ``cache`` (the render cache's folder)."""
    options = dict(request.options)
    known = ("size", "examples", "limit", "root", "cache")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DataError(f"data.options.{unknown[0]} is not an option of kanji; it takes {', '.join(known)}")
    return load_kanji(
        request.part,
        root=options.get("root"),
        cache=options.get("cache"),
        size=options.get("size", request.image_size),
        examples=options.get("examples", 10),
        limit=options.get("limit"),
    )
