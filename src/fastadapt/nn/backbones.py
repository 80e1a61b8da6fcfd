"""Backbones from the papers. Any ``nn.Module`` works with every algorithm; these are conveniences."""

from __future__ import annotations

import torch
from torch import nn

from fastadapt.core.errors import ConfigError
from fastadapt.nn.pool import MaxPool2d


def conv_block(
    in_channels: int, out_channels: int, batch_norm: bool = True, track_running_stats: bool = False, pool: bool = True
) -> nn.Sequential:
    """3x3 conv (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool.

    The pool runs before the ReLU: max and ReLU commute (``relu(max(x)) == max(relu(x))``), and so do their gradients
    (where the window's maximum is positive both route the gradient to its first occurrence; where it is not, both
    give zero), so the block computes the same values and first- and second-order gradients, the ReLU on a quarter of
    the elements. The pool is :class:`fastadapt.nn.pool.MaxPool2d`: torch's, faster on NCHW CPU tensors."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats))
    if pool:
        layers.append(MaxPool2d(2))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The 4-block convolutional network of Vinyals et al. / MAML / ProtoNets.

    4 x [3x3 conv with ``hidden`` filters, BatchNorm, ReLU, 2x2 max-pool] (:func:`conv_block`), flattened, then a linear
    head to ``out_features`` classes (``out_features=None``: no head, the network is an embedding,
    as ProtoNets uses it). On 28x28 Omniglot the embedding has ``hidden`` features (1x1 spatial).

    BatchNorm keeps no running statistics by default (``track_running_stats=False``): it always
    normalises with the statistics of the batch it sees, i.e. per task when tasks are run
    separately: the transductive setting of the MAML paper.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int | None = 5,
        hidden: int = 64,
        image_size: int = 28,
        batch_norm: bool = True,
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        chans = [in_channels, hidden, hidden, hidden, hidden]
        self.features = nn.Sequential(
            *[conv_block(chans[i], chans[i + 1], batch_norm, track_running_stats) for i in range(4)]
        )
        side = image_size
        for _ in range(4):
            side //= 2
        self.embedding_dim = hidden * max(side, 1) ** 2
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x).flatten(1)
        return self.head(z) if self.head is not None else z


def relu_mlp(in_features: int, out_features: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """``Linear -> ReLU`` for each width of ``hidden``, then ``Linear`` to ``out_features``."""
    dims = [in_features, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], out_features))
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Fully connected ReLU network: ``in -> hidden[0] -> ... -> out`` (the MAML sinusoid net is
    ``MLP(1, 1, (40, 40))``)."""

    def __init__(self, in_features: int, out_features: int, hidden: tuple[int, ...] = (40, 40)) -> None:
        super().__init__()
        self.net = relu_mlp(in_features, out_features, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1) if x.ndim > 2 else x)


def conv4(
    in_channels: int,
    out_features: int | None,
    image_size: int,
    hidden: int = 64,
    batch_norm: bool = True,
    input_shape: tuple[int, ...] | None = None,
) -> Conv4:
    """Registered as ``model.name = "conv4"``: :class:`Conv4` for the task source's images.

    One-line errors for inputs it cannot take: not images ``[C, H, W]``, or a side below 16 (four
    2x2 poolings need at least 16 pixels).
    """
    if input_shape is not None and len(input_shape) != 3:
        raise ConfigError(
            "model.name=conv4 takes images [channels, height, width]; this data gives examples of shape "
            f"{list(input_shape)}: "
            f"choose model.name=mlp for vectors"
        )
    if image_size < 16:
        raise ConfigError(
            f"model.name=conv4 halves the image side four times; data.image_size={image_size} is too small, use >= 16"
        )
    if in_channels < 1 or hidden < 1 or (out_features is not None and out_features < 1):
        raise ConfigError(
            f"model.name=conv4 needs in_channels, model.hidden and outputs >= 1; got {in_channels}, {hidden}, "
            f"{out_features}"
        )
    return Conv4(in_channels, out_features, hidden, image_size, batch_norm=batch_norm)


def mlp(input_shape: tuple[int, ...], out_features: int | None, layers: tuple[int, ...] = (40, 40)) -> MLP:
    """Registered as ``model.name = "mlp"``: :class:`MLP` over the flattened input (no head: the last width)."""
    in_features = 1
    for s in input_shape:
        in_features *= int(s)
    if not layers or any(int(w) < 1 for w in layers):
        raise ConfigError(f"model.layers={list(layers)} is invalid; give one or more hidden widths >= 1, e.g. [40, 40]")
    if in_features < 1 or (out_features is not None and out_features < 1):
        raise ConfigError(
            f"model.name=mlp needs inputs and outputs >= 1; got examples of shape {list(input_shape)} and "
            f"{out_features} outputs"
        )
    return MLP(in_features, out_features or layers[-1], tuple(layers))


def flatten(out_features: int | None) -> nn.Flatten:
    """Registered as ``model.name = "flatten"``: the raw input as a vector (MANN's input); it has no head."""
    if out_features is not None:
        raise ConfigError(
            f"model.name=flatten has no output layer; the algorithm needs a model with a {out_features}-output head "
            "(use conv4 or mlp)"
        )
    return nn.Flatten()


from fastadapt.nn.resnet import ResNet12, resnet12  # noqa: E402  (after the blocks it does not use: one module each)

__all__ = ["MLP", "Conv4", "ResNet12", "conv4", "conv_block", "flatten", "mlp", "resnet12"]
