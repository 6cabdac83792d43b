"""Optimizee networks: plain ``nn.Module``s with stable, explanatory parameter names.

Names are ``fc1, fc2, ...`` for Linear layers (the last is the output layer), ``bn1, ...`` for
BatchNorm after the hidden layer of the same index, ``conv1, ...`` for convolutions, so that the
analysis (symmetry structures) and the learned optimizers can address layers by name. Every model
flattens its own input and returns logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; available: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MixedActivation(nn.Module):
    """Applies a different activation to each contiguous slice of the features.

    The paper's "mixture of activations" optimizee: a hidden layer whose units do not all share a
    nonlinearity (so only some of them carry a rescale symmetry).
    """

    def __init__(self, width: int, names: Sequence[str]) -> None:
        super().__init__()
        if not names or len(names) > width:
            raise ValueError(f"need 1..{width} activation names, got {list(names)}")
        bounds = torch.linspace(0, width, len(names) + 1).round().long().tolist()
        self.sizes = [b - a for a, b in itertools.pairwise(bounds)]
        self.names = list(names)
        self.acts = nn.ModuleList(make_activation(n) for n in names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.sizes, dim=-1)
        return torch.cat([act(p) for act, p in zip(self.acts, parts, strict=True)], dim=-1)


class MLP(nn.Module):
    """``in → [Linear → (BatchNorm1d) → act] × len(hidden) → Linear → logits``.

    BatchNorm is affine with no running statistics (the paper's setting): it always normalizes
    with the batch's own statistics, so the model has no buffers and train/eval behave alike.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        activation: str | Sequence[str] = "sigmoid",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        widths = [in_features, *hidden, num_classes]
        self.num_hidden = len(hidden)
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths), start=1):
            self.add_module(f"fc{i}", nn.Linear(fan_in, fan_out))
            if i <= self.num_hidden:
                if batch_norm:
                    self.add_module(
                        f"bn{i}", nn.BatchNorm1d(fan_out, affine=True, track_running_stats=False)
                    )
                act = (
                    make_activation(activation)
                    if isinstance(activation, str)
                    else MixedActivation(fan_out, activation)
                )
                self.add_module(f"act{i}", act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i in range(1, self.num_hidden + 1):
            x = getattr(self, f"fc{i}")(x)
            if hasattr(self, f"bn{i}"):
                x = getattr(self, f"bn{i}")(x)
            x = getattr(self, f"act{i}")(x)
        return getattr(self, f"fc{self.num_hidden + 1}")(x)


class ConvNet(nn.Module):
    """A small convnet: two stride-2 3×3 convolutions with ReLU, then a Linear classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (8, 16),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.in_features = in_channels * image_size * image_size
        self.in_channels, self.image_size = in_channels, image_size
        c_in, size = in_channels, image_size
        self.num_conv = len(channels)
        for i, c_out in enumerate(channels, start=1):
            self.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
            self.add_module(f"act{i}", nn.ReLU())
            c_in, size = c_out, (size + 1) // 2
        self.fc1 = nn.Linear(c_in * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_channels, self.image_size, self.image_size)
        for i in range(1, self.num_conv + 1):
            x = getattr(self, f"act{i}")(getattr(self, f"conv{i}")(x))
        return self.fc1(x.flatten(1))
