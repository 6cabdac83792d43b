"""A ``Task``: what an optimizee is (model factory), what it learns from (dataset, batch size)
and what it minimizes (loss).

Models return logits and the loss is ``F.cross_entropy``: numerically the paper's log-softmax +
NLL, fused into one stable kernel, and it keeps the models usable with any logit-based loss.
The translation symmetry of the softmax is the same either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from l2o.data import DATASET_SHAPES, Dataset, available_datasets, load_dataset

ModelFactory = Callable[[tuple[int, int, int], int], nn.Module]


@dataclass(frozen=True)
class Task:
    """An optimizee task. ``model_factory(input_shape, num_classes)`` builds a fresh model."""

    name: str
    dataset_name: str
    model_factory: ModelFactory
    batch_size: int = 128
    description: str = ""

    def __post_init__(self) -> None:
        if self.dataset_name not in DATASET_SHAPES:
            raise ValueError(
                f"task {self.name!r}: unknown dataset {self.dataset_name!r}; "
                f"available: {available_datasets()}"
            )
        if self.batch_size <= 0:
            raise ValueError(f"task {self.name!r}: batch_size must be positive")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return DATASET_SHAPES[self.dataset_name][0]

    @property
    def num_classes(self) -> int:
        return DATASET_SHAPES[self.dataset_name][1]

    def with_options(self, dataset: str | None = None, batch_size: int | None = None) -> Task:
        """The same model on another dataset of the same shape, or with another batch size."""
        changes: dict = {}
        if dataset is not None and dataset != self.dataset_name:
            if dataset not in DATASET_SHAPES:
                raise ValueError(f"unknown dataset {dataset!r}; available: {available_datasets()}")
            if DATASET_SHAPES[dataset] != DATASET_SHAPES[self.dataset_name]:
                raise ValueError(
                    f"task {self.name!r} expects {self.dataset_name}-shaped inputs "
                    f"{DATASET_SHAPES[self.dataset_name]}, but {dataset!r} has "
                    f"{DATASET_SHAPES[dataset]}"
                )
            changes["dataset_name"] = dataset
        if batch_size is not None:
            changes["batch_size"] = int(batch_size)
        return dataclasses.replace(self, **changes) if changes else self

    def make_model(self, seed: int = 0, device: torch.device | str = "cpu") -> nn.Module:
        """A fresh model: the same seed gives the same weights; the global RNG is untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.model_factory(self.input_shape, self.num_classes)
        return model.to(device)

    def load_data(
        self, device: torch.device | str = "cpu", root=None, download: bool = False
    ) -> Dataset:
        return load_dataset(self.dataset_name, device=device, root=root, download=download)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)
