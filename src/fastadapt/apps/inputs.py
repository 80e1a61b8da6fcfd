"""Images a person gives (an upload, a canvas drawing, a file on the command line) -> the model's input.

One rule for every path: the bytes must be a PNG or a JPEG of at most :data:`MAX_BYTES` bytes and
:data:`MAX_PIXELS` pixels (checked from the header, before decoding; Pillow's decompression-bomb
guard is an error too); the image is converted to the run's channels (grey by ITU-R 601 luma, as
:class:`~fastadapt.ClassDataset` does), resized to the run's size (Lanczos) and scaled to [0, 1].
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import Tensor

from fastadapt.core.errors import DataError

MAX_BYTES = 2 * 1024 * 1024  # an upload or a drawing
MAX_PIXELS = 4096 * 4096  # width * height, read from the header before decoding
FORMATS = ("PNG", "JPEG")
INVERT = ("auto", "never", "always")


def decode_image(data: bytes, shape: tuple[int, ...], invert: str = "auto") -> Tensor:
    """``data`` (PNG or JPEG bytes) -> ``[C, H, W]`` float32 in [0, 1], for a model whose inputs have ``shape``.

    Raises :class:`DataError` (one line) for anything else: too many bytes or pixels, another format,
    a file that does not decode.
    """
    from PIL import Image

    if invert not in INVERT:
        raise DataError(f"invert={invert!r} is unknown; choose one of {', '.join(INVERT)}")
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"this run's inputs have shape {list(shape)}; only grey or RGB images [C, H, W] can be given")
    if len(data) > MAX_BYTES:
        raise DataError(f"the image has {len(data)} bytes; at most {MAX_BYTES} are accepted")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format not in FORMATS:
                    raise DataError(f"the image is {im.format or 'of an unknown format'}; give a PNG or a JPEG")
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise DataError(f"the image is {w}x{h} pixels; at most {MAX_PIXELS} pixels are accepted")
                im = im.convert("L" if shape[0] == 1 else "RGB")
                if im.size != (shape[2], shape[1]):
                    im = im.resize((shape[2], shape[1]), Image.Resampling.LANCZOS)
                arr = np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(f"the image is too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors for a truncated or malformed file
        raise DataError(f"the image does not decode ({type(e).__name__}: {e}); give a PNG or a JPEG") from None
    x = torch.from_numpy(arr.copy()).float().div_(255.0)
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    return oriented(x, invert)


def oriented(x: Tensor, invert: str = "auto") -> Tensor:
    """``x`` in [0, 1], inverted when ``invert`` says so (``auto``: when its mean is above 0.5).

    Polarity: the bundled Omniglot, MNIST and Fashion-MNIST draw bright strokes on a dark ground, the
    way the app's canvas draws. ``invert="auto"`` turns a mostly light image (mean above 0.5: ink on
    paper, an Omniglot original) into that form; ``"never"`` and ``"always"`` force it.
    """
    if invert == "always" or (invert == "auto" and float(x.mean()) > 0.5):
        return 1.0 - x
    return x


def encode_png(x: Tensor) -> bytes:
    """``[C, H, W]`` in [0, 1] (C = 1 or 3) -> PNG bytes (what the app stores and shows)."""
    from PIL import Image

    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    im = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
