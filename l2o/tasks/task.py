"""A ``Task``: what an optimizee is (model factory), what it learns from (dataset, batch size,
pipeline variation) and what it minimizes (loss).

Models return logits, ``[B, C]`` for a classifier or ``[B, T, V]`` for a language model, and the
loss is ``F.cross_entropy`` averaged over every predicted position: numerically the paper's
log-softmax + NLL, fused into one stable kernel, and it keeps the models usable with any
logit-based loss. The translation symmetry of the softmax is the same either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from l2o.data import DATASET_SHAPES, TOKEN_DATASETS, Dataset, available_datasets, load_dataset
from l2o.tasks.variation import TaskVariation

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


@dataclass(frozen=True)
class Task:
    """An optimizee task. ``model_factory(input_shape, num_classes)`` builds a fresh model; a
    factory with ``resized(width, depth)`` (the MLPs, the transformer) accepts those variations.

    ``variation``: how this task's pipeline differs from the registered one
    (``l2o.tasks.TaskVariation``); its batch size is ``batch_size``, the one in effect.
    """

    name: str
    dataset_name: str
    model_factory: ModelFactory
    batch_size: int = 128
    description: str = ""
    variation: TaskVariation = field(default_factory=TaskVariation)

    def __post_init__(self) -> None:
        if self.dataset_name not in DATASET_SHAPES:
            raise ValueError(
                f"task {self.name!r}: unknown dataset {self.dataset_name!r}; "
                f"available: {available_datasets()}"
            )
        if self.batch_size <= 0:
            raise ValueError(f"task {self.name!r}: batch_size must be positive")
        self._check_variation()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return DATASET_SHAPES[self.dataset_name][0]

    @property
    def num_classes(self) -> int:
        return DATASET_SHAPES[self.dataset_name][1]

    @property
    def reads_tokens(self) -> bool:
        """Whether the inputs are token windows ``[B, T]`` (else images ``[B, C, H, W]``)."""
        return self.dataset_name in TOKEN_DATASETS

    @property
    def data_key(self) -> tuple:
        """Equal keys, equal ``load_data()`` (for sharing loaded data between tasks)."""
        return (self.dataset_name, self.variation.data_key)

    def with_options(
        self,
        dataset: str | None = None,
        batch_size: int | None = None,
        variation: TaskVariation | None = None,
    ) -> Task:
        """The same model on another dataset of the same shape, with another batch size, or
        with another pipeline: ``variation`` replaces the task's (its ``batch_size`` None keeps
        the task's batch size; a ``batch_size`` argument overrides both)."""
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
        if variation is not None and not isinstance(variation, TaskVariation):
            raise TypeError(f"variation must be a TaskVariation, got {variation!r}")
        new = variation if variation is not None else self.variation
        chosen = batch_size if batch_size is not None else new.batch_size
        new = dataclasses.replace(
            new, batch_size=chosen if chosen is not None else self.variation.batch_size
        )
        if new != self.variation:
            changes["variation"] = new
            changes["batch_size"] = new.batch_size or self.batch_size
        return dataclasses.replace(self, **changes) if changes else self

    def _check_variation(self) -> None:
        """The variation fits this task's model and data (one-line errors naming the field)."""
        v = self.variation
        if self.reads_tokens and (v.input != "standardized" or v.input_scale != 1):
            key = "input" if v.input != "standardized" else "input_scale"
            raise ValueError(
                f"{key}: task {self.name!r} reads byte tokens; input and input_scale apply to "
                "image inputs only"
            )
        if (v.width is not None or v.depth is not None) and not hasattr(
            self.model_factory, "resized"
        ):
            key = "width" if v.width is not None else "depth"
            raise ValueError(
                f"{key}: task {self.name!r} has no hidden width or depth to change (width and "
                "depth apply to the MLP and transformer tasks)"
            )
        self._factory()

    def _factory(self) -> ModelFactory:
        v = self.variation
        if v.width is None and v.depth is None:
            return self.model_factory
        try:
            return self.model_factory.resized(v.width, v.depth)
        except ValueError as exc:
            raise ValueError(f"task {self.name!r}: {exc}") from None

    def make_model(self, seed: int = 0, device: torch.device | str = "cpu") -> nn.Module:
        """A fresh model: the same seed gives the same weights; the global RNG is untouched.
        ``variation.init_scale`` multiplies every parameter of it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self._factory()(self.input_shape, self.num_classes)
        if self.variation.init_scale != 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(self.variation.init_scale)
        return model.to(device)

    def load_data(
        self, device: torch.device | str = "cpu", root=None, download: bool = False
    ) -> Dataset:
        """The task's data with its variation applied (``input``, ``input_scale``,
        ``train_size``, ``replacement``), so every ``data.sampler(task.batch_size, seed)``
        draws the task's minibatches."""
        normalize = self.variation.input == "standardized"
        data = load_dataset(
            self.dataset_name, device=device, root=root, download=download, normalize=normalize
        )
        return self.variation.prepare(data)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over every predicted position (``[..., C]`` logits)."""
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten())

    @staticmethod
    def correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """How many positions' top-1 prediction is the target (the test metric's numerator)."""
        return (logits.argmax(-1) == targets).sum()
