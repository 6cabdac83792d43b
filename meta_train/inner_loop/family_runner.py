"""Meta-training on a task family (``task.family``): the trainer's per-member machinery.

The meta-batch's slots are assigned to the members once (``families.assign_members`` with the
run seed). The slots of one member share shapes and run together: their own ``InnerState``,
samplers, optimizee and estimator object (``make_estimator(cfg.unroll)``, so PES keeps per-member
particles). One meta-step runs every member's estimator through the estimator interface and
combines the estimates weighted by the members' shares of the slots: with the member meta-losses
averaged over their own slots, the combination is the meta-loss averaged over all slots.

Each run of a slot draws its augmentation (``families.draw_run(seed, slot, run)``): synchronized
runs number the runs ``epoch · runs_per_epoch + run``, per-task runs
(``meta_train.inner_loop.truncation``) use the slot's own run count; either way the draws follow
from the
seed and the position, so a checkpoint needs only the inner states, samplers and estimators.

A meta-step is all or nothing: a non-finite member skips it and every member goes back to the
state before it (optimizees and estimator state).

Under torchrun a runner holds only its rank's slots (``owned``;
``meta_train.training.rank_slots``): the
members with none of them are absent, each present member runs its slots there, weighted by its
share of the rank's slots, so that the ranks' averaged estimates are the whole meta-batch's;
member seeds, draws and ES/PES perturbation rows follow the global member index and slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from l2o.data import Dataset
from l2o.seeding import derive_seed
from l2o.tasks import Task
from l2o.training import data_seed
from meta_train.estimators import Estimator, make_estimator
from meta_train.inner_loop.families import (
    AugmentedOptimizee,
    AugmentedSampler,
    FamilySpec,
    RunDraw,
    assign_members,
    draw_run,
    member_groups,
)
from meta_train.inner_loop.truncation import replace_rows, with_horizons
from meta_train.inner_loop.unroll import InnerState, UnrollConfig, functional_optimizee
from meta_train.training.rank_slots import place_estimator

#: ``check(result, new_inner) -> reason or None``: the trainer's non-finite test of one estimate
Check = Callable[[Any, InnerState], "str | None"]


@dataclass
class FamilyResult:
    """A meta-step's combined result, read like an estimator's ``UnrollResult`` by the
    trainer's metrics: meta-loss and regularization weighted over the members, every member's
    inner losses (rows concatenated), the estimators' metrics and per-member meta-losses."""

    meta_loss: float
    inner_losses: torch.Tensor
    reg_loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    finite: bool = True


@dataclass
class Member:
    """One member task and the meta-batch slots it runs in (here); ``inner`` is None between
    runs; ``index``: its place among all members (its estimator seed)."""

    name: str
    index: int
    task: Task
    data: Dataset
    slots: list[int]
    weight: float
    estimator: Estimator
    regularizer: Any
    inner: InnerState | None = None
    samplers: list | None = None
    runs: list[int] | None = None  # each slot's run index (for its draw)
    optimizee: Any = None


class FamilyRunner:
    """The members' states and one combined meta-step (see the module docstring)."""

    def __init__(
        self,
        spec: FamilySpec,
        tasks: dict[str, Task],
        datasets: dict[str, Dataset],
        slots: int,
        seed: int,
        unroll: UnrollConfig,
        device: torch.device,
        make_regularizer: Callable[[Task], Any],
        owned: Sequence[int] | None = None,
    ) -> None:
        self.spec, self.seed, self.device = spec, seed, device
        self.assignment = assign_members(spec, slots, seed)
        mine = set(range(slots) if owned is None else owned)
        self.members = []
        #: each member's factor on its meta-loss metric: once the ranks' numbers are averaged,
        #: the mean over all its slots (1 in one process; 0 on a rank without the member)
        self.metric_shares: dict[str, float] = {}
        for index, (name, (member_slots, _)) in enumerate(member_groups(self.assignment).items()):
            here = [s for s in member_slots if s in mine]
            self.metric_shares[name] = len(here) * slots / (len(mine) * len(member_slots))
            if not here:
                continue
            estimator = make_estimator(unroll)
            place_estimator(estimator, [member_slots.index(s) for s in here], len(member_slots))
            if hasattr(estimator, "held_out_data"):  # es/pes with objective final_val
                estimator.held_out_data = datasets[name]
            self.members.append(
                Member(
                    name,
                    index,
                    tasks[name],
                    datasets[name],
                    here,
                    len(here) / len(mine),
                    estimator,
                    make_regularizer(tasks[name]),
                )
            )
        self._backup: list[tuple[dict, dict]] | None = None
        self._pending: list[InnerState] | None = None

    @property
    def active(self) -> bool:
        """Whether the members have optimizees (a run is in progress)."""
        return self.members[0].inner is not None

    # -- runs -----------------------------------------------------------------------------------
    def restart(
        self,
        lopt,
        due: list[bool],
        seeds: list[int],
        runs: list[int],
        horizons: list[int] | None = None,
    ) -> None:
        """Fresh optimizees (seed ``seeds[slot]``, draw of run ``runs[slot]``) for the slots
        with ``due[slot]``; every slot when a member has none yet. ``horizons``: each slot's
        run length, told to optimizers with progress inputs (per-task runs)."""
        for m in self.members:
            rows = [i for i, slot in enumerate(m.slots) if due[slot] or m.inner is None]
            if not rows:
                continue
            m.runs = [runs[slot] for slot in m.slots]
            draws = [self._draw(m, slot, run) for slot, run in zip(m.slots, m.runs, strict=True)]
            m.optimizee = self._optimizee(m, draws)
            row_seeds = [seeds[m.slots[i]] for i in rows]
            fresh = self._fresh_state(m, lopt, rows, row_seeds, [draws[i] for i in rows])
            samplers = list(m.samplers or [None] * len(m.slots))
            for i, s in zip(rows, row_seeds, strict=True):
                samplers[i] = self._sampler(m, draws[i], s)
            m.samplers = samplers
            if len(rows) == len(m.slots):
                m.inner = fresh
            else:
                all_seeds = [seeds[slot] for slot in m.slots]
                m.inner = replace_rows(lopt, m.inner, rows, fresh, all_seeds)
            if horizons is not None:
                m.inner = with_horizons(m.inner, [horizons[slot] for slot in m.slots])

    def end_run(self) -> None:
        for m in self.members:
            m.inner, m.samplers = None, None

    def _draw(self, m: Member, slot: int, run: int) -> RunDraw:
        x, _ = m.data.split("train")
        return draw_run(
            self.spec.augment,
            functional_optimizee(m.task, self.device).spec,
            m.task.batch_size,
            m.data.num_classes,
            x.shape[0],
            self.seed,
            slot,
            run,
        )

    def _optimizee(self, m: Member, draws: list[RunDraw]):
        base = functional_optimizee(m.task, self.device)
        return (
            AugmentedOptimizee(base, draws, self.device) if self.spec.augment.changes_loss else base
        )

    def _sampler(self, m: Member, draw: RunDraw, seed: int) -> AugmentedSampler:
        x, y = m.data.split("train")
        return AugmentedSampler(x, y, draw, m.task.batch_size, data_seed(seed), m.data.replacement)

    def _fresh_state(
        self, m: Member, lopt, rows: list[int], seeds: list[int], draws: list[RunDraw]
    ) -> InnerState:
        """New optimizees for ``rows`` of member ``m`` (in the optimizer's coordinates), each
        times its run's drawn initialization scale."""
        optimizee = m.optimizee
        if isinstance(optimizee, AugmentedOptimizee):
            optimizee = optimizee.select(torch.tensor(rows, device=self.device))
        params, buffers = optimizee.init_params(seeds)
        if self.spec.augment.init_scale is not None:
            scales = torch.tensor([d.init_scale for d in draws], dtype=params.dtype)
            params = params * scales.to(params.device).unsqueeze(1)
        spec = functional_optimizee(m.task, self.device).spec
        with torch.no_grad():
            opt_state = lopt.init_state(params, spec)
        return InnerState(params, buffers, opt_state, 0, tuple(seeds), spec)

    # -- one meta-step --------------------------------------------------------------------------
    def estimate(self, lopt, seed: int, check: Check) -> tuple[FamilyResult | None, str | None]:
        """Every member's estimate, weighted into ``lopt``'s ``.grad`` (added to what is there);
        returns the combined result, or ``(None, reason)`` at the first member that fails
        ``check`` (the caller then discards the gradient and calls :meth:`rollback`)."""
        params = [p for p in lopt.parameters() if p.requires_grad]
        total = [p.grad for p in params]
        self._backup = [(m.inner.state_dict(), m.estimator.state_dict()) for m in self.members]
        self._pending = []
        results = []
        for m in self.members:
            for p in params:
                p.grad = None
            member_seed = derive_seed(seed, "family-member", m.index)
            result, new_inner = m.estimator.estimate(
                lopt, m.optimizee, m.inner, m.samplers, m.regularizer, member_seed
            )
            reason = check(result, new_inner)
            if reason is not None:
                return None, reason
            for j, p in enumerate(params):
                if p.grad is not None:
                    part = p.grad * m.weight
                    total[j] = part if total[j] is None else total[j] + part
            self._pending.append(new_inner)
            results.append(result)
        for p, g in zip(params, total, strict=True):
            p.grad = g
        return self._combine(results), None

    def _combine(self, results: list) -> FamilyResult:
        weights = [m.weight for m in self.members]
        metrics = {f"member/{name}/meta_loss": 0.0 for name in self.metric_shares}
        for m, w, r in zip(self.members, weights, results, strict=True):
            metrics[f"member/{m.name}/meta_loss"] = self.metric_shares[m.name] * float(r.meta_loss)
            for key, value in getattr(r, "metrics", {}).items():
                share = value if key.endswith("particle_steps") else w * value  # counts add up
                metrics[key] = metrics.get(key, 0.0) + share
        return FamilyResult(
            meta_loss=math.fsum(w * float(r.meta_loss) for w, r in zip(weights, results)),
            inner_losses=torch.cat([torch.as_tensor(r.inner_losses).detach() for r in results]),
            reg_loss=math.fsum(w * float(r.reg_loss or 0.0) for w, r in zip(weights, results)),
            metrics=metrics,
        )

    def commit(self) -> None:
        """Keep the meta-step: the members continue from their new states."""
        for m, new_inner in zip(self.members, self._pending, strict=True):
            m.inner = new_inner
        self._backup, self._pending = None, None

    def rollback(self) -> None:
        """Discard the meta-step: every member's optimizees and estimator state as before it."""
        for m, (inner, estimator) in zip(self.members, self._backup, strict=True):
            m.inner = InnerState.from_state_dict(inner, m.task, self.device)
            m.estimator.load_state_dict(estimator)
        self._backup, self._pending = None, None

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every member's optimizees, samplers, run indices and estimator state."""
        members = {}
        for m in self.members:
            members[m.name] = {
                "inner": None if m.inner is None else m.inner.state_dict(),
                "samplers": None if m.samplers is None else [s.state_dict() for s in m.samplers],
                "runs": None if m.runs is None else list(m.runs),
                "estimator": m.estimator.state_dict(),
            }
        return {"assignment": list(self.assignment), "members": members}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["assignment"]) != self.assignment:
            raise ValueError(
                f"the checkpoint's family slots {state['assignment']} are not this run's "
                f"{self.assignment}"
            )
        for m in self.members:
            saved = state["members"][m.name]
            m.estimator.load_state_dict(saved["estimator"])
            if saved["inner"] is None:
                m.inner, m.samplers, m.runs = None, None, None
                continue
            m.inner = InnerState.from_state_dict(saved["inner"], m.task, self.device)
            m.runs = [int(r) for r in saved["runs"]]
            draws = [self._draw(m, slot, run) for slot, run in zip(m.slots, m.runs, strict=True)]
            m.optimizee = self._optimizee(m, draws)
            m.samplers = [self._sampler(m, d, s) for d, s in zip(draws, m.inner.seeds, strict=True)]
            for sampler, s in zip(m.samplers, saved["samplers"], strict=True):
                sampler.load_state_dict(s)
