"""Minibatches by index from tensors already on the device.

No DataLoader and no per-sample Python work in the hot path: one epoch is one ``randperm`` drawn
from a seeded CPU generator (so the order is the same on every device), and a batch is a single
``index_select``. With ``replacement`` a batch's indices are drawn uniformly (``randint``) from
the same generator instead. The sampler's whole position is a few tensors, so a resumed run
draws exactly the batches an uninterrupted one would have drawn.
"""

from __future__ import annotations

import torch


class BatchSampler:
    """Endless shuffled minibatches of fixed size (the incomplete tail of an epoch is dropped).

    A fixed batch shape keeps vectorized meta-batches (``vmap`` over optimizees) shape-stable.
    ``replacement=True`` draws every batch's examples independently and uniformly, with
    replacement (an "epoch" then counts as many examples as the data holds).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        seed: int,
        replacement: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size > x.shape[0]:
            raise ValueError(f"batch_size {batch_size} exceeds the {x.shape[0]} examples available")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seed = seed
        self.replacement = bool(replacement)
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0
        self.epoch = -1

    @property
    def batches_per_epoch(self) -> int:
        return self.x.shape[0] // self.batch_size

    def _next_indices(self) -> torch.Tensor:
        n = self.x.shape[0]
        if self.epoch < 0 or self._pos + self.batch_size > n:
            if not self.replacement:
                self._perm = torch.randperm(n, generator=self._generator)
            self._pos = 0
            self.epoch += 1
        if self.replacement:
            idx = torch.randint(n, (self.batch_size,), generator=self._generator)
        else:
            idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx.to(self.x.device, non_blocking=True)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next minibatch ``(x, y)``."""
        idx = self._next_indices()
        return self.x.index_select(0, idx), self.y.index_select(0, idx)

    __next__ = next

    def __iter__(self) -> BatchSampler:
        return self

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Tensors and ints only, so it round-trips through ``torch.load(weights_only=True)``."""
        return {
            "generator": self._generator.get_state(),
            "perm": self._perm.clone(),
            "pos": self._pos,
            "epoch": self.epoch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "replacement": self.replacement,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["batch_size"] != self.batch_size:
            raise ValueError(
                f"sampler state has batch_size {state['batch_size']}, "
                f"this sampler {self.batch_size}"
            )
        replacement = bool(state.get("replacement", False))  # absent in older states
        if replacement != self.replacement:
            raise ValueError(
                f"sampler state draws with replacement={replacement}, this sampler "
                f"with replacement={self.replacement}"
            )
        self._generator.set_state(state["generator"])
        self._perm = state["perm"].clone()
        self._pos = int(state["pos"])
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
