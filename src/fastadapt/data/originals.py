"""The full-resolution (105x105) Omniglot originals from the official archives, verified before use
(:func:`load_omniglot_originals` says how)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset

OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip"
MAX_IMAGE_BYTES = 1 << 20  # the largest image (archive entry or extracted file) accepted; the originals are < 2 KiB
MAX_ARCHIVE_BYTES = 256 << 20  # the most an archive may extract to in all; the originals' archives extract to < 40 MiB
PUBLISHED_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(
    url: str, target: Path, sha256: str | None = None, md5: str | None = None, progress: bool = True
) -> Path:
    """Download ``url`` to ``target`` atomically; verify ``sha256`` (or ``md5``) before keeping it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    bar = _progress(total, f"download {target.name}") if progress else None
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        out.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    if bar is not None:
                        bar.close()
            except OSError as e:
                raise DataError(f"download of {url} failed ({e}); check the network or pass a local path") from None
        _verify_digest(tmp, sha256, md5, url)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _progress(total: int | None, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a core dependency, but a download must not need it
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)


def _verify_digest(path: Path, sha256: str | None, md5: str | None, what: str) -> None:
    """Check ``path`` against ``sha256`` when given, else against ``md5`` when given."""
    for algorithm, label, expected in (("sha256", "SHA-256", sha256), ("md5", "MD5", md5)):
        if expected is None:
            continue
        got = file_digest(path, algorithm)
        if got != expected.lower():
            raise DataError(
                f"{label} of {what} is {got}, expected {expected}; the file is corrupted or not the official "
                "archive, delete it and retry"
            )
        return


def safe_extract(
    archive: Path,
    target: Path,
    check: Callable[[str, bytes], None] | None = None,
    max_entry_bytes: int | None = None,
    max_total_bytes: int | None = None,
) -> list[str]:
    """Extract ``archive`` into ``target`` (created; must not exist), refusing entries outside it.

    ``check(name, data)`` is called on every file before anything is written and may raise.
    ``max_entry_bytes`` / ``max_total_bytes``: refuse the archive, before extracting anything, when
    an entry or all entries together would extract to more (entries that claim a smaller size than
    they hold are refused when read). Returns the extracted file names. On any error nothing is left
    at ``target``.
    """
    if target.exists():
        raise DataError(f"{target} already exists; remove it to extract again")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    names = []
    try:
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{archive} is not a readable zip archive ({e}); delete it and download again") from None
        with zf:
            infos = zf.infolist()
            _check_sizes(archive, infos, max_entry_bytes, max_total_bytes)
            for info in infos:
                name = info.filename
                pure = PurePosixPath(name)
                mode = (info.external_attr >> 16) & 0o170000
                drive = ":" in pure.parts[0] if pure.parts else False
                if pure.is_absolute() or ".." in pure.parts or "\\" in name or drive:
                    raise DataError(f"archive entry {name!r} would extract outside {target}; refusing the archive")
                if mode == 0o120000:
                    raise DataError(f"archive entry {name!r} is a symbolic link; refusing the archive")
                dest = (tmp / name).resolve()
                if not dest.is_relative_to(tmp.resolve()):
                    raise DataError(f"archive entry {name!r} would extract outside {target}; refusing the archive")
                if info.is_dir():
                    continue
                data = _read_entry(archive, zf, info, max_entry_bytes)
                if check is not None:
                    check(name, data)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                names.append(name)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return names


def _check_sizes(archive: Path, infos: list[zipfile.ZipInfo], max_entry: int | None, max_total: int | None) -> None:
    """Refuse ``archive`` by the sizes its entries declare, before anything is extracted."""
    total = 0
    for info in infos:
        if max_entry is not None and info.file_size > max_entry:
            raise DataError(
                f"archive entry {info.filename!r} of {archive} would extract to {info.file_size} bytes, more than the "
                f"{max_entry} allowed for one image; refusing the archive, use the official one"
            )
        total += info.file_size
    if max_total is not None and total > max_total:
        raise DataError(
            f"{archive} would extract to {total} bytes, more than the {max_total} allowed; refusing the archive, "
            "use the official one"
        )


def _read_entry(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int | None) -> bytes:
    """The entry's bytes, reading at most ``max_bytes`` + 1 of them whatever its header claims."""
    try:
        with zf.open(info) as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:  # a bad CRC, a lying size, a broken stream
        raise DataError(
            f"archive entry {info.filename!r} of {archive} cannot be read ({e}); delete the archive and download again"
        ) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise DataError(
            f"archive entry {info.filename!r} of {archive} holds more than {max_bytes} bytes; refusing the archive, "
            "use the official one"
        )
    return data


def _manifest_check(manifest: Mapping[str, str]) -> Callable[[str, bytes], None]:
    def check(name: str, data: bytes) -> None:
        if PurePosixPath(name).name.startswith(".") or "__MACOSX" in name:
            return
        if not name.lower().endswith(".png"):
            return
        want = manifest.get(name)
        if want is None:
            raise DataError(f"archive entry {name!r} is not an Omniglot original; refusing the archive")
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise DataError(
                f"SHA-256 of {name} is {got}, expected {want}; the archive is corrupted, delete it and download again"
            )

    return check


def _verified_image(path: Path, key: str, manifest: Mapping[str, str], folder: Path) -> bytes:
    """The bytes of the extracted image ``path`` (``key`` in the manifest), refused unless their SHA-256 is the
    manifest's."""
    want = manifest.get(key)
    again = f"delete {folder} to extract the archive again"
    if want is None:
        raise DataError(f"{path} is not an Omniglot original (not in the manifest); {again}")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise DataError(f"{path} is {size} bytes, more than the {MAX_IMAGE_BYTES} allowed for one image; {again}")
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise DataError(f"SHA-256 of {path} is {got}, expected {want}; the image was altered, {again}")
    return data


def load_omniglot_originals(
    root: str | Path,
    background: bool = True,
    download: bool = False,
    url: str = OFFICIAL_URL,
    sha256: str | None = None,
    manifest: Mapping[str, str] | None = None,
    size: int | None = None,
) -> ClassDataset:
    """The 105x105 originals of one split (``images_background`` or ``images_evaluation``).

    Args:
        root: folder holding (or receiving) ``<name>.zip`` and the extracted ``<name>/`` folder.
        background: the background split (30 alphabets) if True, else evaluation (20 alphabets).
        download: fetch the archive from ``url`` when it is not in ``root``.
        url: the archive location; ``{name}`` is replaced by the archive's name.
        sha256: expected SHA-256 of the archive; if None the published MD5 is checked.
        manifest: expected SHA-256 of each PNG keyed by its path in the archive; default: bundled.
        size: resize to ``size x size`` (Lanczos) if given.

    Returns a :class:`ClassDataset` of uint8 ``[M, 1, H, W]`` images, ink = 255, one class per character.

    ``images_background.zip`` and ``images_evaluation.zip`` are read from ``root``, or downloaded from
    their official location when asked (``download=True``). Before use:

    1. the archive is checked against a digest: a SHA-256 you pass, else the published MD5 (the only
       digest published for these archives);
    2. every entry is checked to extract inside the target folder (no absolute paths, no ``..``,
       no links) and to be no larger than :data:`MAX_IMAGE_BYTES` (a 105x105 PNG is a few hundred
       bytes), with all entries together no larger than :data:`MAX_ARCHIVE_BYTES`, before anything is
       extracted;
    3. every PNG is checked against the SHA-256 manifest bundled with the package (derived from a
       verified copy of the originals) while extracting and again every time it is loaded: the bytes
       hashed are the bytes decoded, so a wrong, altered, added or missing image never loads (no cache
       of verified files is kept: docs/PERFORMANCE.md gives the cost).

    A download goes to a temporary file first and is renamed into place only once verified; a failed
    check deletes it. Extraction goes to a temporary folder, renamed when complete.
    """
    from PIL import Image

    name = "images_background" if background else "images_evaluation"
    root = Path(root)
    archive = root / f"{name}.zip"
    folder = root / name
    if manifest is None:
        from fastadapt.data.omniglot import bundled_png_digests

        manifest = bundled_png_digests()
    if not folder.is_dir():
        if not archive.is_file():
            if not download:
                raise DataError(f"{archive} not found; put the official archive there or pass download=True")
            download_file(
                url.format(name=name), archive, sha256=sha256, md5=None if sha256 else PUBLISHED_MD5.get(name)
            )
        else:
            _verify_digest(archive, sha256, None if sha256 else PUBLISHED_MD5.get(name), str(archive))
        safe_extract(archive, folder, _manifest_check(manifest), MAX_IMAGE_BYTES, MAX_ARCHIVE_BYTES)
    files = sorted(p for p in folder.rglob("*.png") if not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder} holds no PNG images; delete it and extract the archive again")
    expected = {k for k in manifest if k.startswith(f"{name}/")}
    missing = expected - {f.relative_to(folder).as_posix() for f in files}  # the archive's paths start with <name>/ too
    if missing:
        raise DataError(
            f"{folder} lacks {len(missing)} of its {len(expected)} images (e.g. {min(missing)}); "
            f"delete the folder to extract the archive again"
        )
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f"{f.parent.parent.name}/{f.parent.name}", []).append(f)
    images, counts = [], []
    for key in sorted(groups):
        for f in groups[key]:
            with Image.open(io.BytesIO(_verified_image(f, f.relative_to(folder).as_posix(), manifest, folder))) as im:
                im = im.convert("L")
                arr = 255 - np.asarray(im, dtype=np.uint8)  # ink bright
                if size is not None:
                    arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS))
            images.append(arr)
        counts.append(len(groups[key]))
    data = torch.from_numpy(np.stack(images)[:, None].copy())
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(counts).cumsum(0)])
    return ClassDataset(data, offsets, tuple(sorted(groups)), f"omniglot-{name}")
