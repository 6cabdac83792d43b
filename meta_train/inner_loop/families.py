"""Task families: a meta-batch draws its optimizees from a distribution, not one fixed task.

(a) ``FamilySpec.members``: registry tasks with weights. Each slot of the meta-batch is given a
member once (``assign_members``, proportional to the weights, order shuffled by the seed); the
slots of one member share shapes and are vectorized together; the estimators run once per member
and their estimates combine weighted by the member's share of the slots (``member_groups``).

(b) ``AugmentationSpec``: shape-preserving changes drawn per run of each task:

* per-tensor reparameterization θ = s ⊙ θ′ (learned_optimization's task augmentation, Lv et
  al.'s random scaling): the optimizer sees and updates θ′, the model runs at s ⊙ θ′, so its
  gradient is s ⊙ ∇L(s ⊙ θ′) and the scale of every tensor is unknown to the optimizer;
* a random loss scale c (the loss and gradient are multiplied by c);
* a random batch size from a set, realized as a mask over a batch of the largest size (the
  batch shape stays fixed, so tasks with different sizes still share one ``vmap``);
* a random subset of the training data and a random permutation of the labels;
* a random input scale (every input of the run times c, log-uniform: the ``input_scale`` of
  ``l2o.tasks.TaskVariation`` drawn per run) and a random initialization scale (the fresh
  parameters times s, log-uniform: its ``init_scale``).

A member may also carry a fixed variation (``l2o.tasks.TaskVariation``, in its task): its data
and initial weights are the task's own (``Task.load_data``, ``make_optimizee``).

Every draw comes from ``derive_seed(seed, "family", slot, run)``: reproducible, and a resumed
run redraws exactly what it had (nothing else to save).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, grad_and_value, vmap

from l2o.data.sampler import BatchSampler
from l2o.optimizers.base import ParamSpec
from l2o.seeding import derive_seed


@dataclass(frozen=True)
class AugmentationSpec:
    """Ranges of the per-run augmentations; None or empty disables one.

    Attributes:
        param_scale: ``(lo, hi)``: each tensor's s is log-uniform in it.
        loss_scale: ``(lo, hi)``: c log-uniform in it.
        batch_sizes: the sizes to draw from (each at most the task's batch size).
        data_fraction: keep this fraction of the training examples (a random subset per run).
        permute_labels: draw a random permutation of the classes per run.
        input_scale: ``(lo, hi)``: the run's inputs times c, log-uniform in it (images only).
        init_scale: ``(lo, hi)``: the run's fresh parameters times s, log-uniform in it.
    """

    param_scale: tuple[float, float] | None = None
    loss_scale: tuple[float, float] | None = None
    batch_sizes: tuple[int, ...] = ()
    data_fraction: float | None = None
    permute_labels: bool = False
    input_scale: tuple[float, float] | None = None
    init_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for key in ("param_scale", "loss_scale", "input_scale", "init_scale"):
            rng = getattr(self, key)
            if rng is not None and not (len(rng) == 2 and 0 < rng[0] <= rng[1]):
                raise ValueError(f"{key} must be (lo, hi) with 0 < lo <= hi, got {rng}")
        if any(b <= 0 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if self.data_fraction is not None and not 0 < self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")

    @property
    def changes_loss(self) -> bool:
        """Whether the optimizee's loss changes (else the plain functional optimizee serves;
        the data subset and label permutation live in the samplers)."""
        return self.param_scale is not None or self.loss_scale is not None or bool(self.batch_sizes)


@dataclass(frozen=True)
class FamilySpec:
    """``members``: ``(task name, weight)`` pairs; ``augment``: the per-run augmentations."""

    members: tuple[tuple[str, float], ...]
    augment: AugmentationSpec = field(default_factory=AugmentationSpec)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a task family needs at least one member")
        for i, (name, weight) in enumerate(self.members):
            if not (weight > 0 and math.isfinite(weight)):
                raise ValueError(f"members[{i}].weight ({name!r}) must be positive, got {weight}")


def assign_members(spec: FamilySpec, slots: int, seed: int) -> list[str]:
    """The member task of each meta-batch slot: counts proportional to the weights (largest
    remainders), at least one slot per member when there are enough, order shuffled by ``seed``."""
    if slots < len(spec.members):
        raise ValueError(f"{len(spec.members)} family members need at least as many slots")
    total = sum(w for _, w in spec.members)
    exact = [slots * w / total for _, w in spec.members]
    counts = [max(1, math.floor(e)) for e in exact]
    while sum(counts) > slots:
        i = max(range(len(counts)), key=lambda j: (counts[j] - exact[j], counts[j]))
        counts[i] -= 1
    while sum(counts) < slots:
        i = max(range(len(counts)), key=lambda j: exact[j] - counts[j])
        counts[i] += 1
    names = [name for (name, _), c in zip(spec.members, counts, strict=True) for _ in range(c)]
    gen = torch.Generator().manual_seed(derive_seed(seed, "family-slots") % 2**63)
    order = torch.randperm(slots, generator=gen).tolist()
    return [names[i] for i in order]


def member_groups(assignment: Sequence[str]) -> dict[str, tuple[list[int], float]]:
    """``{member: (slots, weight)}``: which slots run together and the weight (share of slots)
    of that group's estimate in the meta-batch's mean."""
    groups: dict[str, list[int]] = {}
    for slot, name in enumerate(assignment):
        groups.setdefault(name, []).append(slot)
    return {k: (v, len(v) / len(assignment)) for k, v in groups.items()}


@dataclass
class RunDraw:
    """One run's augmentation of one task: per-coordinate scale ``[N]``, loss scale, batch
    mask ``[batch]``, label permutation ``[C]``, training-example subset (or None), input
    scale and initialization scale (None: unchanged)."""

    scale: torch.Tensor
    loss_scale: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    subset: torch.Tensor | None
    input_scale: float | None = None
    init_scale: float | None = None


def _log_uniform(gen: torch.Generator, lo: float, hi: float, n: int) -> torch.Tensor:
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).float()


def draw_run(
    aug: AugmentationSpec,
    spec: ParamSpec,
    batch_size: int,
    num_classes: int,
    num_train: int,
    seed: int,
    slot: int,
    run: int,
) -> RunDraw:
    """The augmentation of run ``run`` of slot ``slot`` (the same for the same arguments)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "family", slot, run) % 2**63)
    if aug.param_scale is not None:
        per_tensor = _log_uniform(gen, *aug.param_scale, len(spec.names))
        scale = torch.repeat_interleave(per_tensor, torch.tensor(spec.numels))
    else:
        scale = torch.ones(spec.numel)
    loss_scale = (
        _log_uniform(gen, *aug.loss_scale, 1)[0] if aug.loss_scale is not None else torch.ones(())
    )
    mask = torch.ones(batch_size)
    if aug.batch_sizes:
        size = aug.batch_sizes[int(torch.randint(len(aug.batch_sizes), (), generator=gen))]
        if size > batch_size:
            raise ValueError(f"augmented batch size {size} exceeds the task's {batch_size}")
        mask[size:] = 0.0
    labels = (
        torch.randperm(num_classes, generator=gen)
        if aug.permute_labels
        else torch.arange(num_classes)
    )
    subset = None
    if aug.data_fraction is not None and aug.data_fraction < 1:
        keep = max(batch_size, round(aug.data_fraction * num_train))
        subset = torch.randperm(num_train, generator=gen)[:keep].sort().values
    # drawn last, so that runs without them draw everything else as before
    input_scale = float(_log_uniform(gen, *aug.input_scale, 1)) if aug.input_scale else None
    init_scale = float(_log_uniform(gen, *aug.init_scale, 1)) if aug.init_scale else None
    return RunDraw(scale, loss_scale, mask, labels, subset, input_scale, init_scale)


class AugmentedSampler:
    """A run's minibatches: from its data subset, with its labels permuted and its inputs
    scaled. The subset is kept as row numbers (never a copy of the examples: one sampler per
    slot and run). ``replacement``: how the data's own sampler draws (``Dataset.replacement``)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        draw: RunDraw,
        batch_size: int,
        seed: int,
        replacement: bool = False,
    ):
        if draw.input_scale is not None and not x.is_floating_point():
            raise ValueError("augment.input_scale applies to image inputs only, not tokens")
        self.x, self.y = x, y
        self.labels = draw.labels.to(y.device)
        self.input_scale = draw.input_scale
        self.subset = None if draw.subset is None else draw.subset.to(x.device)
        if self.subset is None:
            self.inner = BatchSampler(x, y, batch_size, seed, replacement)
        else:  # over the subset's row numbers: the same batches as over a copy of the subset
            self.inner = BatchSampler(self.subset, self.subset, batch_size, seed, replacement)

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.subset is None:
            x, y = self.inner.next()
        else:
            rows, _ = self.inner.next()
            x, y = self.x.index_select(0, rows), self.y.index_select(0, rows)
        if self.input_scale is not None:
            x = x * self.input_scale
        return x, self.labels[y]

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


class AugmentedOptimizee:
    """A ``FunctionalOptimizee`` whose B optimizees run with their own draws: the optimizer's
    coordinates θ′, the model at ``scale ⊙ θ′``, the loss ``c · masked mean`` of the per-example
    losses. Same interface (``loss_and_grad``, ``loss``, ``spec``) as the plain one."""

    def __init__(self, base, draws: Sequence[RunDraw], device) -> None:
        self.base, self.spec = base, base.spec
        self.set_draws(draws, device)
        model, task = base.model, base.task

        def example_loss(logit, target):
            return task.loss(logit.unsqueeze(0), target.unsqueeze(0))

        per_example = vmap(example_loss)

        def loss_fn(flat, buffers, x, y, scale, c, mask):
            params = self.spec.unflatten(flat * scale)
            logits = functional_call(model, (params, buffers), (x,))
            return c * (per_example(logits, y) * mask).sum() / mask.sum()

        self._grad = vmap(grad_and_value(loss_fn))
        self._loss = vmap(loss_fn)

    def set_draws(self, draws: Sequence[RunDraw], device) -> None:
        """Install the B optimizees' current draws (after a restart redraws some)."""
        self.scale = torch.stack([d.scale for d in draws]).to(device)
        self.loss_scale = torch.stack([d.loss_scale for d in draws]).to(device)
        self.mask = torch.stack([d.mask for d in draws]).to(device)

    def select(self, index: torch.Tensor) -> AugmentedOptimizee:
        """The optimizee for rows ``index`` of this one's (e.g. particles → their tasks)."""
        out = object.__new__(AugmentedOptimizee)
        out.__dict__.update(self.__dict__)
        out.scale = self.scale.index_select(0, index)
        out.loss_scale = self.loss_scale.index_select(0, index)
        out.mask = self.mask.index_select(0, index)
        return out

    def _check(self, flat: torch.Tensor) -> None:
        if flat.shape[0] != self.scale.shape[0]:
            raise ValueError(
                f"{flat.shape[0]} rows for {self.scale.shape[0]} augmented optimizees (select)"
            )

    def loss_and_grad(self, flat, buffers, x, y):
        self._check(flat)
        with torch.no_grad():
            grad, loss = self._grad(flat, buffers, x, y, self.scale, self.loss_scale, self.mask)
        return loss, grad

    def loss(self, flat, buffers, x, y):
        self._check(flat)
        return self._loss(flat, buffers, x, y, self.scale, self.loss_scale, self.mask)

    def init_params(self, seeds: Sequence[int]):
        """Fresh optimizees in the optimizer's coordinates θ′ = θ / s (the same function)."""
        params, buffers = self.base.init_params(seeds)
        if len(seeds) != self.scale.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {self.scale.shape[0]} optimizees")
        return params / self.scale, buffers
