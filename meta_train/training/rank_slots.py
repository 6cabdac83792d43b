"""The slots of the meta-batch that this process owns under ``torchrun``, and their checkpoint.

Rank r of W owns the slots ``[r·B/W, (r+1)·B/W)`` of the meta-batch of B = ``schedule.meta_batch``
(``distributed.slice_bounds``): their optimizees and samplers, a task family's member states for
them, and their ES/PES particles live on that rank, and every rank's slice goes into ``last.pt``
(gathered to rank 0, which writes it atomically). Everything random about a slot follows from its
*global* index, never from the rank: its optimizee seeds, its augmentation draws
(``families.draw_run(seed, slot, run)``), its rows of the ES/PES perturbations
(:func:`place_estimator`) and its clock (the per-task clocks of all B slots run identically on
every rank: a few integers and one generator). So W ranks compute what one process computes with
the whole meta-batch, up to the order of the sums in the meta-gradient's all-reduce, and a resume
with the same W continues bit for bit.

A checkpoint written by another number of processes (:func:`own_slice`): synchronized runs
re-slice the meta-batch and restart the run in progress at its first meta-step (the same seeds);
per-task runs and stateful estimators are refused with one line, because their state continues
across meta-steps on the rank that held the slot.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meta_train.training import distributed as dist
from meta_train.training.checkpointing import CheckpointError

#: the checkpoint entries that belong to one rank's slice (rank 0's at the top level, as in a
#: single-process checkpoint; the others' in ``ranks``)
SLICE_KEYS = ("inner", "samplers", "estimator", "family")


@dataclass(frozen=True)
class RankSlots:
    """Slots ``owned`` of the ``total`` of the meta-batch, on rank ``rank`` of ``world``."""

    total: int
    world: int
    rank: int

    @classmethod
    def of_this_process(cls, total: int) -> RankSlots:
        """This process's share (all slots without a process group); refuses a meta-batch that
        does not divide by the number of processes."""
        world, rank = dist.world_size(), dist.rank()
        dist.slice_bounds(total, world, rank)
        return cls(total, world, rank)

    @property
    def owned(self) -> list[int]:
        lo, hi = dist.slice_bounds(self.total, self.world, self.rank)
        return list(range(lo, hi))


def place_estimator(estimator: Any, tasks: Sequence[int], total: int) -> bool:
    """Tell an estimator that draws per-task noise (``global_tasks``: ES, PES) that its tasks are
    rows ``tasks`` of ``total``; returns whether it takes that (else its seed must differ per
    rank, or every rank would draw the same noise)."""
    if not hasattr(estimator, "global_tasks"):
        return False
    estimator.global_tasks = (tuple(tasks), total)
    return True


def pack(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint entries of every rank's slice state (``SLICE_KEYS``), in rank order."""
    return {**{k: slices[0].get(k) for k in SLICE_KEYS}, "ranks": list(slices[1:])}


def unpack(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's slice state from a checkpoint written by :func:`pack` (or by one process)."""
    top = {k: payload.get(k) for k in SLICE_KEYS}
    return [top, *({k: s.get(k) for k in SLICE_KEYS} for s in payload.get("ranks", []))]


def own_slice(
    payload: dict[str, Any], slots: RankSlots, *, per_task_runs: bool, estimator: str
) -> tuple[dict[str, Any], bool]:
    """This rank's slice state from ``payload``, and whether the run in progress restarts at its
    first meta-step (another number of processes, synchronized runs: a statement says so)."""
    saved_world = int(payload.get("world_size", 1))
    slices = unpack(payload)
    if saved_world == slots.world:
        own = slices[slots.rank]
        return {**own, "estimator": own["estimator"] or {}}, False
    head = (
        f"cannot resume: the checkpoint was written by {saved_world} process(es), this run has "
        f"{slots.world}"
    )
    if per_task_runs:
        raise CheckpointError(
            f"{head}; with per-task runs (a schedule.horizon range or schedule.desync) each slot's "
            "optimizee, clock and estimator state carry on across runs on the rank that held it, "
            f"so the slices cannot be re-cut: resume with {saved_world} process(es)"
        )
    if any(_has_estimator_state(s) for s in slices):
        raise CheckpointError(
            f"{head}; estimator {estimator!r} keeps per-slot state that belongs to the old "
            f"slices: resume with {saved_world} process(es)"
        )
    in_progress = any(_in_progress(s) for s in slices)
    if dist.is_main():
        print(_reslice_statement(saved_world, slots, in_progress, payload), file=sys.stderr)
    return {k: None for k in SLICE_KEYS} | {"estimator": {}}, in_progress


def _has_estimator_state(state: dict[str, Any]) -> bool:
    members = (state["family"] or {}).get("members", {}).values()
    return bool(state["estimator"]) or any(m["estimator"] for m in members)


def _in_progress(state: dict[str, Any]) -> bool:
    members = (state["family"] or {}).get("members", {}).values()
    return state["inner"] is not None or any(m["inner"] is not None for m in members)


def _reslice_statement(
    saved_world: int, slots: RankSlots, in_progress: bool, payload: dict[str, Any]
) -> str:
    share = slots.total // slots.world
    text = (
        f"resume: the checkpoint was written by {saved_world} process(es), this run has "
        f"{slots.world}. The meta-batch of {slots.total} optimizees is re-sliced: {share} per "
        "rank; seeds, augmentations and perturbations follow the global slot, but the "
        "meta-gradient is summed in another order, so results are no longer bit-identical to an "
        "uninterrupted run"
    )
    if in_progress:
        p = payload["position"]
        text += (
            f". The run in progress (epoch {p['epoch'] + 1}, run {p['run'] + 1}) restarts at its "
            f"first meta-step with fresh optimizees of the same seeds; its {p['meta_step']} "
            "meta-step(s) done stay counted in the global step"
        )
    return text
