"""Data augmentation for training episodes, as tensor operations (no torchvision), seeded per task
(``data.augment``; :class:`AugmentedTasks` says what each operation does)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError
from fastadapt.data.convert import LUMA  # ITU-R 601-2 greyscale of RGB, as torchvision and PIL
from fastadapt.data.sampler import _mix

OPERATIONS = ("rotate90", "flip", "crop", "shift", "affine", "jitter")  # the order they are applied in
JITTER = 0.4  # colour jitter strength: each factor is uniform in [1 - JITTER, 1 + JITTER]
# "affine": Koch, Zemel & Salakhutdinov 2015 (sec. 4.2), their ranges for 105x105 Omniglot; each of the seven
# components is drawn (uniform in its range) with probability AFFINE_KEEP, else left at the identity's value
AFFINE_ROTATION = 10.0  # theta in [-10, 10] degrees
AFFINE_SHEAR = 0.3  # rho_x, rho_y in [-0.3, 0.3]
AFFINE_SCALE = (0.8, 1.2)  # s_x, s_y
AFFINE_TRANSLATION = 2.0 / 105.0  # t_x, t_y in [-2, 2] pixels of 105: as a fraction of the side, for any size
AFFINE_KEEP = 0.5  # the probability that a component is drawn
_SALT = 0xA6  # keeps the augmentation's draws apart from the sampler's own for the same (seed, step, index)


def rotate90_per_class(x: Tensor, y: Tensor, ways: int, g: torch.Generator) -> Tensor:
    """``x [M, C, S, S]`` with every image of label ``c`` turned by ``k_c * 90`` degrees, ``k_c`` uniform in 0..3."""
    k = torch.randint(0, 4, (ways,), generator=g)
    out = x.clone()
    for c in range(ways):
        if int(k[c]):
            rows = y == c
            out[rows] = torch.rot90(x[rows], int(k[c]), dims=(-2, -1))
    return out


def flip(x: Tensor, g: torch.Generator) -> Tensor:
    """``x [M, C, H, W]`` with each image mirrored left-right with probability 1/2."""
    mask = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(mask.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def _windows(padded: Tensor, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
    """``padded [M, C, H', W']`` -> ``[M, C, h, w]``: image ``m``'s window whose top-left corner is
    ``(top[m], left[m])``."""
    m = padded.shape[0]
    rows = top.view(m, 1) + torch.arange(h)  # [M, h]: the padded row each output row reads
    cols = left.view(m, 1) + torch.arange(w)
    picked = padded[torch.arange(m).view(m, 1, 1), :, rows.view(m, h, 1), cols.view(m, 1, w)]  # [M, h, w, C]
    return picked.permute(0, 3, 1, 2).contiguous()


def shift(x: Tensor, g: torch.Generator, margin: int | None = None) -> Tensor:
    """``x [M, C, H, W]`` with each image moved by ``(dy, dx)``, uniform in ``[-margin, margin]`` (default
    ``max(1, min(H, W) // 8)``), the uncovered border filled by replicating the edge."""
    m, _, h, w = x.shape
    margin = max(1, min(h, w) // 8) if margin is None else margin
    d = torch.randint(-margin, margin + 1, (2, m), generator=g)
    padded = F.pad(x, (margin, margin, margin, margin), mode="replicate")
    return _windows(padded, margin - d[0], margin - d[1], h, w)


def crop(x: Tensor, g: torch.Generator, padding: int | None = None) -> Tensor:
    """``x [M, C, H, W]`` zero-padded by ``padding`` pixels on each side (default ``max(1, min(H, W) // 8)``), then
    each image's ``H x W`` window at offset ``(top, left)``, both uniform in ``0 .. 2 * padding``: pad-and-crop."""
    m, _, h, w = x.shape
    padding = max(1, min(h, w) // 8) if padding is None else padding
    offsets = torch.randint(0, 2 * padding + 1, (2, m), generator=g)
    padded = F.pad(x, (padding, padding, padding, padding), mode="constant", value=0.0)
    return _windows(padded, offsets[0], offsets[1], h, w)


def affine_matrices(m: int, g: torch.Generator, side_ratio: float = 1.0) -> Tensor:
    """``[M, 2, 3]`` random affine maps ``p -> A p + t`` in normalised coordinates (``[-1, 1]`` across the image):
    ``A = R(theta) Sh(rho_x, rho_y) S(s_x, s_y)``, ``t = 2 (t_x, t_y)`` (a fraction of the side spans 2 units),
    each of the seven components drawn with probability :data:`AFFINE_KEEP` from Koch et al.'s ranges
    (:data:`AFFINE_ROTATION`, :data:`AFFINE_SHEAR`, :data:`AFFINE_SCALE`, :data:`AFFINE_TRANSLATION`), else the
    identity's (0, 0, 0, 1, 1, 0, 0). ``side_ratio``: width / height (the shear and rotation act in pixels)."""
    u = torch.rand(m, 7, generator=g, dtype=torch.float64)
    keep = torch.rand(m, 7, generator=g, dtype=torch.float64) < AFFINE_KEEP
    lo, hi = AFFINE_SCALE
    theta = torch.where(keep[:, 0], (2 * u[:, 0] - 1) * AFFINE_ROTATION, 0.0).deg2rad()
    rho = torch.where(keep[:, 1:3], (2 * u[:, 1:3] - 1) * AFFINE_SHEAR, 0.0)
    scale = torch.where(keep[:, 3:5], lo + (hi - lo) * u[:, 3:5], 1.0)
    shift_ = torch.where(keep[:, 5:7], (2 * u[:, 5:7] - 1) * AFFINE_TRANSLATION * 2, 0.0)
    cos, sin = theta.cos(), theta.sin()
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [M, 2, 2]
    one = torch.ones_like(cos)
    shear = torch.stack([torch.stack([one, rho[:, 0]], -1), torch.stack([rho[:, 1], one], -1)], -2)
    a = rot @ shear @ torch.diag_embed(scale)
    pixels = torch.tensor([side_ratio, 1.0], dtype=torch.float64)  # normalised x spans W pixels, y spans H
    a = a * (1 / pixels).view(1, 2, 1) * pixels.view(1, 1, 2)  # the same map in pixels, written in normalised units
    return torch.cat([a, shift_.unsqueeze(-1)], -1)


def warp(x: Tensor, maps: Tensor) -> Tensor:
    """``x [M, C, H, W]`` with image ``m`` moved by the affine map ``maps[m] [2, 3]`` (``p -> A p + t``, normalised
    coordinates): output pixel ``p`` reads the input at ``A^-1 (p - t)``, bilinearly; what comes from outside the
    image is 0 (the background of Omniglot's bundled images: white strokes, value 1, on black, value 0)."""
    a, t = maps[:, :, :2], maps[:, :, 2:]
    inv = torch.linalg.inv(a)
    theta = torch.cat([inv, -inv @ t], -1).to(x.dtype)  # affine_grid maps output coordinates to input ones
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine(x: Tensor, g: torch.Generator) -> Tensor:
    """``x [M, C, H, W]``, each image distorted by its own random affine map (:func:`affine_matrices`, Koch et al.
    2015's rotation, shear, scale and translation), bilinear, zero outside the image (:func:`warp`)."""
    return warp(x, affine_matrices(x.shape[0], g, x.shape[-1] / x.shape[-2]))


def greyscale(x: Tensor) -> Tensor:
    """``x [M, C, H, W]`` -> ``[M, 1, H, W]``: the ITU-R 601-2 luma for RGB, the image itself for one channel, else the
    channel mean."""
    if x.shape[1] == 3:
        weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def jitter(x: Tensor, g: torch.Generator, strength: float = JITTER, clamp: bool = True) -> Tensor:
    """``x [M, C, H, W]`` colour-jittered per image: brightness ``x * b``, contrast ``c * x + (1 - c) * mean(grey(x))``,
    saturation ``s * x + (1 - s) * grey(x)`` (a no-op on one channel), in that order, with ``(b, c, s)`` of image ``m``
    = ``1 + strength * (2 * u - 1)``, ``u = torch.rand(3, M)[:, m]`` drawn from ``g``; ``clamp``: to [0, 1] after
    each."""
    m = x.shape[0]
    factors = (1.0 + strength * (2.0 * torch.rand(3, m, generator=g) - 1.0)).to(x.dtype).view(3, m, 1, 1, 1)
    b, c, s = factors

    def bound(v: Tensor) -> Tensor:
        return v.clamp(0.0, 1.0) if clamp else v

    x = bound(x * b)
    x = bound(c * x + (1.0 - c) * greyscale(x).mean((1, 2, 3), keepdim=True))
    return bound(s * x + (1.0 - s) * greyscale(x))


def augment_task(
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    ways: int,
    ops: tuple[str, ...],
    g: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """One task's support and query images (``[N*K, C, H, W]``, ``[N*Q, C, H, W]``) transformed by ``ops`` with
    ``g``."""
    x, y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
    for op in OPERATIONS:
        if op not in ops:
            continue
        if op == "rotate90":
            x = rotate90_per_class(x, y, ways, g)
        elif op == "flip":
            x = flip(x, g)
        elif op == "crop":
            x = crop(x, g)
        elif op == "shift":
            x = shift(x, g)
        elif op == "affine":
            x = affine(x, g)
        else:
            x = jitter(x, g, clamp=bool(x.min() >= 0 and x.max() <= 1))
    return x[: len(support_x)], x[len(support_x) :]


class AugmentedTasks:
    """A training task source whose tasks are augmented; everything else is the source's.

    ``data.augment = ["flip", "rotate90", "crop", "shift", "jitter"]`` (any subset) wraps the training
    task source: task ``i`` of step ``s`` is drawn as before, then transformed with a generator seeded by
    ``(seed, s, i)``, so a training task stays a pure function of ``(seed, step, index)`` (resume,
    ``torchrun`` shards and ``DataLoader`` workers see the same tasks). Validation and test episodes are
    never augmented. The operations are applied in this order, whatever the order of the list
    (:func:`augment_task` transforms one task, support and query together):

    =============  ===========================================================================
    ``rotate90``   per class: every image of a class is turned by the same multiple of 90 degrees
                   (a rotated class is another class, as in Omniglot's Vinyals split; square images)
    ``flip``       per image: mirrored left-right with probability 1/2
    ``crop``       per image: the standard few-shot random crop: zero-padded by ``p = max(1, side // 8)``
                   pixels on each side, then an ``H x W`` window taken at a uniform offset in ``0..2p``
                   (torchvision's ``RandomCrop(size, padding=p)``)
    ``shift``      per image: moved by up to ``max(1, side // 8)`` pixels in each direction (edges
                   replicated)
    ``affine``     per image: Koch et al. 2015's affine distortion for one-shot Omniglot (:func:`affine`):
                   rotation up to 10 degrees, shear up to 0.3, scale 0.8 to 1.2 per axis, translation up
                   to 2/105 of the side, each component present with probability 1/2; bilinear, the
                   uncovered border 0 (Omniglot's background)
    ``jitter``     per image: colour jitter, brightness, then contrast, then saturation, each factor
                   uniform in ``[0.6, 1.4]`` (torchvision's ``ColorJitter(0.4, 0.4, 0.4)`` in a fixed
                   order). On grey images (one channel) saturation is a no-op: a grey image is its own
                   greyscale. Results are clamped to [0, 1] after each step, as torchvision does, when
                   the task's images lie in [0, 1] (the sampler's images from uint8 data do); other
                   value ranges (normalised floats) are left unclamped.
    =============  ===========================================================================
    """

    def __init__(self, source: Any, ops: tuple[str, ...] | list[str], seed: int) -> None:
        unknown = [op for op in ops if op not in OPERATIONS]
        if unknown:
            raise ConfigError(f"data.augment: {unknown[0]!r} is not one of {', '.join(OPERATIONS)}")
        self.source, self.ops, self.seed = source, tuple(ops), int(seed)

    def __getattr__(self, name: str) -> Any:  # ways, shots, queries, dataset, fixed, ... of the source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def sample_tasks(self, step: int, start: int, count: int) -> TaskBatch:
        """The source's tasks ``start .. start+count-1`` of ``step``, task ``i`` augmented with the generator of
        ``(seed, step, i)``."""
        batch = self.source.sample_tasks(step, start, count)
        if batch.support_x.ndim != 5 or not batch.support_x.is_floating_point() or batch.classes is None:
            raise ConfigError(
                f"data.augment works on classification tasks of images [C, H, W]; this source gives examples of shape "
                f"{list(batch.support_x.shape[2:])}: set data.augment = []"
            )
        if "rotate90" in self.ops and batch.support_x.shape[-1] != batch.support_x.shape[-2]:
            raise ConfigError(
                f"data.augment rotate90 needs square images; these are {list(batch.support_x.shape[-2:])}"
            )
        sx, qx = [], []
        for t in range(len(batch)):
            g = torch.Generator().manual_seed(_mix(self.seed, step, start + t, _SALT))
            s, q = augment_task(
                batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t], batch.ways, self.ops, g
            )
            sx.append(s)
            qx.append(q)
        return TaskBatch(torch.stack(sx), batch.support_y, torch.stack(qx), batch.query_y, batch.classes)


def augmented(source: Any, ops: tuple[str, ...] | list[str], seed: int) -> Any:
    """``source`` with its tasks augmented by ``ops`` (``source`` itself when ``ops`` is empty)."""
    return AugmentedTasks(source, ops, seed) if ops else source


__all__ = [
    "AFFINE_KEEP",
    "AFFINE_ROTATION",
    "AFFINE_SCALE",
    "AFFINE_SHEAR",
    "AFFINE_TRANSLATION",
    "JITTER",
    "OPERATIONS",
    "AugmentedTasks",
    "affine",
    "affine_matrices",
    "augment_task",
    "augmented",
    "crop",
    "flip",
    "greyscale",
    "jitter",
    "rotate90_per_class",
    "shift",
    "warp",
]
