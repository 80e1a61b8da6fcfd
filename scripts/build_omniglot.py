"""Build the bundled 28x28 Omniglot (``src/fastadapt/data/omniglot28.npz``) from the 105x105 originals.

Usage::

    python scripts/build_omniglot.py [--source ../shared/data/omniglot] [--out src/fastadapt/data]

Preprocessing, as in the MAML / Matching Networks / ProtoNets code: each 105x105 binary image is
inverted so that ink is bright (ink = 1), converted to 8-bit grey and resized to 28x28 with PIL's
Lanczos filter (antialiasing), then stored as uint8 (0 = background, 255 = full ink).
Rows are in original character-id order (id 1..1623), drawings 1..20. Beside the pixels it stores
the SHA-256 of every original PNG (``png_sha256`` [1623, 20, 32]), so that the loader of the official
archives can verify each image it extracts.
The output is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 28


def _png_digests(z) -> np.ndarray:
    """SHA-256 of every original PNG of one split, as uint8 [chars, 20, 32]."""
    offsets, png = z["png_offsets"], z["png"]
    n = len(z["char_ids"])
    out = np.empty((n, 20, 32), dtype=np.uint8)
    for j in range(n * 20):
        blob = png[offsets[j] : offsets[j + 1]].tobytes()
        out[j // 20, j % 20] = np.frombuffer(hashlib.sha256(blob).digest(), dtype=np.uint8)
    return out


def _resize_split(npz_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    z = np.load(npz_path)
    pixels = np.unpackbits(z["images"], axis=-1, count=105).astype(bool)  # True = background
    ink = (~pixels).astype(np.uint8) * 255
    n, d = ink.shape[:2]
    out = np.empty((n, d, SIZE, SIZE), dtype=np.uint8)
    for i in range(n):
        for k in range(d):
            img = Image.fromarray(ink[i, k], mode="L").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            out[i, k] = np.asarray(img)
    return out, z["char_ids"].astype(np.int16), z["characters"], _png_digests(z)


def build(source: Path, out_dir: Path) -> Path:
    parts = [_resize_split(source / f"{split}.npz") for split in ("images_background", "images_evaluation")]
    image_arr, id_arr, name_arr, digest_arr = (np.concatenate(p) for p in zip(*parts))
    order = np.argsort(id_arr, kind="stable")
    image_arr, id_arr, name_arr, digest_arr = image_arr[order], id_arr[order], name_arr[order], digest_arr[order]
    if not np.array_equal(id_arr, np.arange(1, 1624)):
        raise SystemExit("character ids are not exactly 1..1623; is the source complete?")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "omniglot28.npz"
    # np.savez_compressed stamps zip entries with the current time; write entries ourselves so
    # that the file is byte-for-byte reproducible.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        arrays = {"images": image_arr, "char_ids": id_arr, "characters": name_arr, "png_sha256": digest_arr}
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            arr_buf = io.BytesIO()
            np.lib.format.write_array(arr_buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, arr_buf.getvalue(), compresslevel=9)
    target.write_bytes(buf.getvalue())
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (out_dir / "omniglot28.sha256").write_text(f"{digest}  omniglot28.npz\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/omniglot"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/fastadapt/data")
    args = parser.parse_args()
    target = build(args.source, args.out)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
