"""Glyphs: letters of many scripts rendered from the fonts of Debian's ``fonts-noto-core``, a class a character.

Provenance and licence: Google's Noto fonts as Debian packages them (fonts-noto-core), SIL Open Font License 1.1.
A class is a letter that at least ``min_fonts`` fonts map in their 'cmap' table (the rule: :func:`letter`); its
examples are its renderings in each of those fonts (typefaces, weights, styles). Every font file is checked against
its sfnt checksum before it is used; the renders are cached per image size (:mod:`.cache`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.core import cancel
from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset
from fastadapt.data.domains.cache import cached, split_classes

NOTO_DIR = Path("/usr/share/fonts/truetype/noto")  # where Debian's fonts-noto-core puts its .ttf files
INSTALL = "apt-get install fonts-noto-core"
VERSION = "1"  # of the rendering rule; the cache file's name also holds the size, min_fonts and the fonts' digest
MIN_FONTS = 5  # a character needs this many fonts (so at least this many examples)
SFNT_SUM = 0xB1B0AFBA  # the 32-bit sum of every well-formed sfnt file (OpenType spec, 'head' checkSumAdjustment)
LETTERS = ("Lu", "Ll", "Lt", "Lo")  # Unicode general categories kept (no modifier letters, marks, digits, punctuation)
LETTERLIKE = range(0x2100, 0x2150)  # the Letterlike Symbols block (turned and script forms of Latin letters)


def letter(cp: int) -> bool:
    """The class rule: a letter (category Lu, Ll, Lt or Lo), its own NFKC normal form (no compatibility, mathematical,
    fullwidth or presentation forms), not Latin (so no overlap with MNIST-family data), not a letterlike symbol, not a
    Han ideograph (those are in fonts-noto-cjk, not here)."""
    ch = chr(cp)
    if unicodedata.category(ch) not in LETTERS or unicodedata.normalize("NFKC", ch) != ch or cp in LETTERLIKE:
        return False
    name = unicodedata.name(ch, "")
    return bool(name) and "LATIN" not in name and not name.startswith("CJK ")


def font_files(folder: str | Path | None = None) -> list[Path]:
    """The ``.ttf`` files of ``folder`` (default :data:`NOTO_DIR`), sorted by name; a one-line error when none."""
    root = Path(folder) if folder is not None else NOTO_DIR
    files = sorted(root.glob("*.ttf")) if root.is_dir() else []
    if not files:
        raise DataError(f"glyphs: no fonts (*.ttf) in {root}; {INSTALL} (or pass root= a folder of .ttf fonts)")
    return files


def read_font(path: Path) -> bytes:
    """The bytes of font ``path``, checked: the big-endian uint32 sum of the whole file must be :data:`SFNT_SUM`."""
    data = path.read_bytes()
    padded = data + b"\0" * (-len(data) % 4)
    total = int(np.frombuffer(padded, ">u4").sum(dtype=np.uint64)) & 0xFFFFFFFF
    if len(data) < 12 or total != SFNT_SUM:
        raise DataError(
            f"glyphs: font {path} fails its sfnt checksum (corrupt or partial); apt-get install --reinstall "
            "fonts-noto-core"
        )
    return data


def cmap(data: bytes) -> set[int]:
    """The code points a TrueType/OpenType font maps to a glyph other than .notdef, read from its Unicode 'cmap'
    subtable (format 12 preferred, else format 4)."""
    (count,) = struct.unpack_from(">H", data, 4)
    tables = {data[12 + 16 * i : 16 + 16 * i]: struct.unpack_from(">II", data, 20 + 16 * i) for i in range(count)}
    if b"cmap" not in tables:
        return set()
    base = tables[b"cmap"][0]
    (n,) = struct.unpack_from(">H", data, base + 2)
    subs = dict(((p, e), o) for p, e, o in (struct.unpack_from(">HHI", data, base + 4 + 8 * i) for i in range(n)))
    for key in ((3, 10), (0, 4), (3, 1), (0, 3)):
        if key not in subs:
            continue
        at = base + subs[key]
        (fmt,) = struct.unpack_from(">H", data, at)
        if fmt == 12:
            (groups,) = struct.unpack_from(">I", data, at + 12)
            out: set[int] = set()
            for j in range(groups):
                first, last, glyph = struct.unpack_from(">III", data, at + 16 + 12 * j)
                out.update(range(first + (glyph == 0), last + 1))  # a group from glyph 0 maps its first to .notdef
            return out
        if fmt == 4:
            return _cmap4(data, at)
    return set()


def _cmap4(data: bytes, at: int) -> set[int]:
    seg = struct.unpack_from(">H", data, at + 6)[0] // 2
    ends = struct.unpack_from(f">{seg}H", data, at + 14)
    starts = struct.unpack_from(f">{seg}H", data, at + 16 + 2 * seg)
    deltas = struct.unpack_from(f">{seg}h", data, at + 16 + 4 * seg)
    ranges_at = at + 16 + 6 * seg
    ranges = struct.unpack_from(f">{seg}H", data, ranges_at)
    out: set[int] = set()
    for k in range(seg):
        for cp in range(starts[k], min(ends[k], 0xFFFE) + 1):
            if ranges[k] == 0:
                glyph = (cp + deltas[k]) & 0xFFFF
            else:
                (glyph,) = struct.unpack_from(">H", data, ranges_at + 2 * k + ranges[k] + 2 * (cp - starts[k]))
                glyph = (glyph + deltas[k]) & 0xFFFF if glyph else 0
            if glyph:
                out.add(cp)
    return out


def render(font: Any, ch: str, size: int) -> np.ndarray | None:
    """``ch`` in ``font`` (a PIL FreeType font at about four times ``size``), white on black: its ink box scaled,
    aspect kept, so its longer side is ``size`` less a margin of ``size // 14`` each side, centred; None when the
    glyph has no ink."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(ch)
    if right <= left or bottom <= top:
        return None
    big = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(big).text((1 - left, 1 - top), ch, font=font, fill=255)
    box = big.getbbox()
    if box is None:
        return None
    ink = big.crop(box)
    fit = size - 2 * max(1, size // 14)
    scale = fit / max(ink.size)
    w, h = (max(1, round(v * scale)) for v in ink.size)
    out = Image.new("L", (size, size))
    out.paste(ink.resize((w, h), Image.Resampling.LANCZOS), ((size - w) // 2, (size - h) // 2))
    return np.asarray(out, dtype=np.uint8)


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="font", leave=False, delay=1.0)


def build_glyphs(
    fonts: dict[str, bytes], size: int, min_fonts: int, limit: int | None = None, skipped: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render every class (a :func:`letter` that at least ``min_fonts`` of ``fonts`` map; the first ``limit`` by code
    point) in each font that maps it. A font whose 'cmap' cannot be read, or a render that fails or has no ink, is
    skipped and counted in ``skipped``; a character left with fewer than ``min_fonts`` renders is dropped (counted
    as ``"classes"``)."""
    from PIL import ImageFont

    skips = skipped if skipped is not None else {}
    covers = {}
    for name, data in fonts.items():
        try:
            covers[name] = cmap(data)
        except struct.error:  # a table that points past the file's end: the font is skipped, counted
            covers[name] = set()
            skips["fonts"] = skips.get("fonts", 0) + 1
    counts: dict[int, int] = {}
    for cps in covers.values():
        for cp in cps:
            counts[cp] = counts.get(cp, 0) + 1
    chars = sorted(cp for cp, n in counts.items() if n >= min_fonts and letter(cp))[:limit]
    wanted = set(chars)
    renders: dict[int, list[np.ndarray]] = {cp: [] for cp in chars}
    with _progress(len(fonts), f"rendering glyphs at {size}px") as bar:
        for name, data in fonts.items():
            cancel.check()  # a stop asked for (a command's signal): abandon the rendering, nothing is cached
            mine = sorted(covers[name] & wanted)
            if mine:
                font = ImageFont.truetype(io.BytesIO(data), 4 * size, layout_engine=ImageFont.Layout.BASIC)
                for cp in mine:
                    try:
                        image = render(font, chr(cp), size)
                    except (OSError, ValueError):
                        image = None
                    if image is None:
                        skips["renders"] = skips.get("renders", 0) + 1
                    else:
                        renders[cp].append(image)
            bar.update(1)
    kept = [cp for cp in chars if len(renders[cp]) >= min_fonts]
    skips["classes"] = skips.get("classes", 0) + len(chars) - len(kept)
    images = np.stack([im for cp in kept for im in renders[cp]])[:, None] if kept else np.zeros((0, 1, size, size))
    labels = np.repeat(np.arange(len(kept)), [len(renders[cp]) for cp in kept])
    names = [f"U+{cp:04X} {unicodedata.name(chr(cp))}" for cp in kept]
    return images.astype(np.uint8), labels.astype(np.int64), names


def load_glyphs(
    part: str = "train",
    root: str | Path | None = None,
    cache: str | Path | None = None,
    size: int = 28,
    min_fonts: int = MIN_FONTS,
    limit: int | None = None,
) -> ClassDataset:
    """The glyphs of ``part`` (train, val or test: 70/15/15 % of the characters, disjoint, by a hash of the class
    name) as uint8 ``[M, 1, size, size]``; ``root``: the fonts (default :data:`NOTO_DIR`), ``cache``: where the
    renders are kept (default :func:`~fastadapt.data.domains.cache.cache_root`), ``limit``: only the first classes
    by code point (a quick subset)."""
    if size < 8 or min_fonts < 1 or (limit is not None and limit < 1):
        raise DataError(f"glyphs: size {size} (>= 8), min_fonts {min_fonts} (>= 1), limit {limit} (>= 1 or None)")
    digest = hashlib.sha256(unicodedata.unidata_version.encode())
    fonts: dict[str, bytes] = {}
    for path in font_files(root):
        fonts[path.name] = read_font(path)
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(fonts[path.name]).digest())
    version = f"{VERSION}-s{size}-k{min_fonts}-n{limit or 0}-{digest.hexdigest()[:16]}"
    images, labels, names = cached("glyphs", version, lambda: _built(fonts, size, min_fonts, limit), cache)
    per_class = np.bincount(labels, minlength=len(names))
    if not names or images.shape[1:] != (1, size, size) or per_class.min() < min_fonts:
        raise DataError(
            f"glyphs: {len(names)} classes of images {list(images.shape[1:])}, fewest examples a class "
            f"{per_class.min() if names else 0}; need classes of at least {min_fonts} images [1, {size}, {size}] "
            f"(fonts in {root or NOTO_DIR}: {len(fonts)}; lower min_fonts, or {INSTALL})"
        )
    keep = split_classes(names, part)
    mask = np.isin(labels, keep)
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    return ClassDataset.from_arrays(
        images[mask], remap[labels[mask]], name=f"glyphs-{part}", class_names=[names[i] for i in keep]
    )


def _built(fonts: dict[str, bytes], size: int, min_fonts: int, limit: int | None) -> Any:
    skipped: dict[str, int] = {}
    built = build_glyphs(fonts, size, min_fonts, limit, skipped)
    if any(skipped.values()):
        logging.getLogger(__name__).warning(
            f"glyphs: skipped {skipped.get('fonts', 0)} unreadable fonts, {skipped.get('renders', 0)} renders "
            "(no ink or a FreeType error) and "
            f"{skipped.get('classes', 0)} characters left with fewer than {min_fonts} renders"
        )
    return built


OPTIONS: dict[str, Callable[[Any], Any]] = {"size": int, "min_fonts": int, "limit": int, "root": str, "cache": str}


def glyphs(request: Any) -> ClassDataset:
    """Letters of many scripts rendered from Debian's fonts-noto-core (OFL 1.1), a class a character, an example a font.

    ``data.options``: ``size`` (the render size; default ``data.image_size``), ``min_fonts`` (5), ``limit`` (the
    first classes by code point only), ``root`` (a folder of .ttf fonts), ``cache`` (where renders are kept).
    """
    options = dict(request.options)
    for key in options:
        if key not in OPTIONS:
            raise DataError(f"data.options.{key} is not an option of glyphs; it takes {', '.join(OPTIONS)}")
    try:
        opts = {k: OPTIONS[k](v) for k, v in options.items()}
    except (TypeError, ValueError) as e:
        raise DataError(f"glyphs: data.options {options} ({e})") from None
    opts.setdefault("size", request.image_size)
    return load_glyphs(request.part, **opts)
