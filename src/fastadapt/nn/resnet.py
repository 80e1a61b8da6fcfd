"""ResNet-12, the few-shot backbone of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019), with
DropBlock (Ghiasi et al. 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.core.errors import ConfigError
from fastadapt.nn.pool import max_pool2d

CHANNELS = (64, 160, 320, 640)  # MetaOptNet's ResNet-12


def drop_block(x: Tensor, drop_prob: float, block_size: int, training: bool = True) -> Tensor:
    """DropBlock (Ghiasi et al. 2018) on ``x [B, C, H, W]``: zero ``block_size`` x ``block_size`` squares so
    that about ``drop_prob`` of the units are dropped, then rescale the rest by ``numel / kept``. Identity
    when not training or at 0.

    The block centres are drawn from torch's global generator (seeded by ``run.seed``, saved in checkpoints).
    """
    if not training or drop_prob <= 0:
        return x
    _, _, h, w = x.shape
    size = min(block_size, h, w)
    valid = (h - size + 1) * (w - size + 1)
    gamma = drop_prob * h * w / (size**2 * valid)  # the centre rate giving drop_prob of the units dropped (eq. 1)
    centres = (torch.rand(x.shape[0], x.shape[1], h - size + 1, w - size + 1, device=x.device) < gamma).to(x.dtype)
    pad = size - 1
    mask = F.max_pool2d(
        F.pad(centres, (pad, pad, pad, pad)), size, stride=1
    )  # each centre covers the block below-right of it
    keep = 1 - mask
    return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResidualBlock(nn.Module):
    """Three 3x3 convs with BatchNorm (LeakyReLU 0.1 after the first two), a 1x1 conv shortcut, LeakyReLU, 2x2 max-pool,
    DropBlock."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        batch_norm: bool = True,
        track_running_stats: bool = False,
        drop_prob: float = 0.0,
        block_size: int = 1,
    ) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c, track_running_stats=track_running_stats) if batch_norm else nn.Identity()

        self.conv1, self.bn1 = (
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm),
            norm(out_channels),
        )
        self.conv2, self.bn2 = (
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not batch_norm),
            norm(out_channels),
        )
        self.conv3, self.bn3 = (
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not batch_norm),
            norm(out_channels),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=not batch_norm), norm(out_channels))
        self.drop_prob, self.block_size = drop_prob, block_size

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        out = max_pool2d(F.leaky_relu(out + self.shortcut(x), 0.1), 2)
        return drop_block(out, self.drop_prob, self.block_size, self.training)


class ResNet12(nn.Module):
    """ResNet-12: ``[B, C, H, W] -> [B, out_features]``, or the embedding when ``out_features`` is None.

    Four residual blocks (:class:`ResidualBlock`); each is three 3x3 convolutions (BatchNorm, LeakyReLU
    0.1 after the first two), a 1x1 convolution + BatchNorm shortcut, the sum, LeakyReLU 0.1, a 2x2
    max-pool and, optionally, DropBlock. Channels 64-160-320-640 (MetaOptNet, RFS) by default; TADAM's
    narrower 64-128-256-512 is ``channels=(64, 128, 256, 512)``, and ``width`` scales them all
    (``width=2``: a wide ResNet-12; ``width=0.5``: a small one for CPUs). The embedding is the global
    average of the last feature map (``[B, channels[-1] * width]``), then a linear head when the
    algorithm wants one.

    BatchNorm keeps no running statistics by default, as :class:`~fastadapt.nn.Conv4`: it normalises
    with the statistics of the batch it is given (the transductive setting every reported number names).

    ``drop_prob``: DropBlock's rate in the last two blocks (MetaOptNet uses 0.1 with ``block_size`` 5 on
    miniImageNet's 84x84; 0 turns it off), and plain dropout of that rate in the first two.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_features: int | None = None,
        channels: tuple[int, ...] = CHANNELS,
        width: float = 1.0,
        batch_norm: bool = True,
        track_running_stats: bool = False,
        drop_prob: float = 0.0,
        block_size: int = 5,
    ) -> None:
        super().__init__()
        chans = [in_channels, *(max(1, round(c * width)) for c in channels)]
        self.blocks = nn.Sequential(
            *[
                ResidualBlock(
                    chans[i],
                    chans[i + 1],
                    batch_norm,
                    track_running_stats,
                    drop_prob if i >= 2 else 0.0,
                    block_size if i >= 2 else 1,
                )
                for i in range(4)
            ]
        )
        self.dropout = drop_prob
        self.embedding_dim = chans[-1]
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < 2 and self.dropout:
                x = F.dropout(x, self.dropout, self.training)
        z = x.mean(dim=(-2, -1))
        return self.head(z) if self.head is not None else z


def resnet12(
    in_channels: int,
    out_features: int | None,
    image_size: int,
    batch_norm: bool = True,
    input_shape: tuple[int, ...] | None = None,
    channels: tuple[int, ...] | list[int] = CHANNELS,
    width: float = 1.0,
    drop_prob: float = 0.0,
    block_size: int = 5,
) -> ResNet12:
    """Registered as ``model.name = "resnet12"``: :class:`ResNet12` for the task source's images.

    ``model.options``: ``channels`` (4 widths, default 64-160-320-640), ``width`` (a factor on them),
    ``drop_prob`` and ``block_size`` (DropBlock). One-line errors for inputs it cannot take.
    """
    if input_shape is not None and len(input_shape) != 3:
        raise ConfigError(
            "model.name=resnet12 takes images [channels, height, width]; "
            f"this data gives examples of shape {list(input_shape)}"
        )
    if image_size < 16:
        raise ConfigError(
            f"model.name=resnet12 halves the image side four times; data.image_size={image_size} is too small, "
            "use >= 16"
        )
    channels = tuple(channels)
    if len(channels) != 4 or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in channels):
        raise ConfigError(
            f"model.options.channels={list(channels)} is invalid; give 4 widths >= 1, e.g. [64, 160, 320, 640]"
        )
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 16:
        raise ConfigError(f"model.options.width={width!r} is invalid; it must be a factor in (0, 16], e.g. 0.5 or 2")
    if isinstance(drop_prob, bool) or not isinstance(drop_prob, (int, float)) or not 0 <= drop_prob < 1:
        raise ConfigError(f"model.options.drop_prob={drop_prob!r} is invalid; it must be in [0, 1)")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"model.options.block_size={block_size!r} is invalid; it must be an integer >= 1")
    if in_channels < 1 or (out_features is not None and out_features < 1):
        raise ConfigError(f"model.name=resnet12 needs in_channels and outputs >= 1; got {in_channels}, {out_features}")
    return ResNet12(
        in_channels, out_features, channels, float(width), batch_norm, drop_prob=float(drop_prob), block_size=block_size
    )


__all__ = ["CHANNELS", "ResNet12", "ResidualBlock", "drop_block", "resnet12"]
