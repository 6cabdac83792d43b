"""Data-parallel meta-training under ``torchrun``: the process group and the few collectives the
trainer needs, each one call that fails loudly (with this rank and the collective's name) instead
of hanging.

    torchrun --nproc_per_node=2 meta_train/run.py --config tiny schedule.meta_batch=4

Each rank unrolls its own slice of the meta-batch; :func:`reduce_meta_step` averages the
meta-gradient (and the skip votes and the logged scalars) with ONE all-reduce per meta-step,
before clipping, so every rank applies the same meta-optimizer step. :func:`check_in_sync`
verifies, cheaply and every so often, that the learned optimizer's weights are still identical.

Without torchrun's environment (``WORLD_SIZE``/``RANK``/``MASTER_ADDR``) no process group is made
and every helper here is the single-process identity: a plain ``python meta_train/run.py`` runs
exactly as before. Backend: ``nccl`` when the run's device is CUDA, else ``gloo``. Collectives
time out after ``$L2O_DIST_TIMEOUT_S`` seconds (default 600): long enough for a rank-0 checkpoint
write, short enough that a hung rank stops the job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

TIMEOUT_ENV = "L2O_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank most likely raised or hung."""


class WeightDivergenceError(RuntimeError):
    """The ranks' learned-optimizer weights differ: the data-parallel invariant is broken."""


def launched_by_torchrun() -> bool:
    """True when torchrun's (or a launcher's) rendezvous variables are set."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))


def launch_rank() -> int:
    """This process's rank as torchrun announced it (0 without torchrun): usable before
    :func:`init`, e.g. to let only rank 0 lock the run folder."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its node (its CUDA device under torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the one process that logs, checkpoints and meta-tests."""
    return rank() == 0


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"${TIMEOUT_ENV} must be positive, got {raw!r}")
    return value


def backend_for(device: str) -> str:
    """``nccl`` for a CUDA run (``cuda``, ``cuda:N``, or ``auto`` with a GPU), else ``gloo``."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def init(device: str = "cpu") -> bool:
    """Join torchrun's process group if launched by it; returns whether a group exists.

    On CUDA each process takes GPU ``LOCAL_RANK``. Idempotent."""
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def session(device: str = "cpu") -> Iterator[bool]:
    """:func:`init` on entry, :func:`shutdown` on exit (also after an error)."""
    active = init(device)
    try:
        yield active
    finally:
        if active:
            shutdown()


def _collective(name: str, fn: Callable[[], T]) -> T:
    """Run one collective; a failure (a peer gone, a timeout) becomes a :class:`DistributedError`
    naming this rank and the collective, so the job stops with a message instead of a hang."""
    try:
        return fn()
    except (RuntimeError, dist.DistBackendError) as exc:
        raise DistributedError(
            f"rank {rank()} of {world_size()}: collective {name!r} failed ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}); another rank "
            f"most likely raised or hung (see its traceback; the timeout is ${TIMEOUT_ENV}="
            f"{timeout_s():g}s)"
        ) from exc


def slice_bounds(total: int, world: int, index: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``index``'s equal share of ``total`` items (``total % world == 0``)."""
    if total % world:
        raise ValueError(
            f"schedule.meta_batch={total} must be divisible by the number of processes ({world}): "
            "each rank unrolls an equal slice of the meta-batch"
        )
    share = total // world
    return index * share, (index + 1) * share


def reduce_meta_step(
    params: Sequence[torch.nn.Parameter], votes: Sequence[float], scalars: Sequence[float]
) -> tuple[list[float], list[float]]:
    """Average the meta-gradient over ranks in place, and sum ``votes`` / average ``scalars``.

    ONE all-reduce of a flat buffer: every parameter's ``.grad`` (zeros where None), a has-grad
    mask (a parameter keeps ``grad=None`` only if it has none on every rank), the votes (e.g.
    one per non-finite reason) and the scalars to log. Called between the estimator and the
    clipping; a no-op returning its inputs without a process group."""
    if not is_distributed():
        return list(votes), list(scalars)
    world = world_size()
    device = params[0].device
    grads = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
    mask = [1.0 if p.grad is not None else 0.0 for p in params]
    extra = torch.tensor([*mask, *votes, *scalars], dtype=params[0].dtype, device=device)
    flat = torch.cat([*(g.to(extra.dtype) for g in grads), extra])
    _collective("all_reduce(meta-gradient)", lambda: dist.all_reduce(flat))
    flat /= world
    offset = 0
    tail = flat[sum(g.numel() for g in grads) :].tolist()
    has_grad = tail[: len(params)]
    for p, present in zip(params, has_grad, strict=True):
        n = p.numel()
        if present > 0:
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    k = len(params)
    summed_votes = [v * world for v in tail[k : k + len(votes)]]
    return summed_votes, tail[k + len(votes) :]


def _fingerprint(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Three float64 numbers that differ between two weight vectors unless (almost surely) equal:
    the sum, the sum of squares and a position-weighted sum."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in params])
    position = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * flat).sum(), (flat * position.sqrt()).sum()])


def check_in_sync(params: Sequence[torch.Tensor], where: str) -> None:
    """Raise :class:`WeightDivergenceError` on every rank if the ranks' ``params`` differ (one
    all-reduce MAX of the fingerprint and its negation: max == min on every rank iff equal)."""
    if not is_distributed():
        return
    fp = _fingerprint(params)
    both = torch.cat([fp, -fp])
    _collective("all_reduce(weight check)", lambda: dist.all_reduce(both, op=dist.ReduceOp.MAX))
    high, low = both[:3], -both[3:]
    if not torch.equal(high, low):
        raise WeightDivergenceError(
            f"rank {rank()} of {world_size()}: the learned optimizer's weights differ between "
            f"ranks {where} (fingerprint max {high.tolist()} vs min {low.tolist()}; this rank "
            f"{fp.tolist()}); the ranks no longer apply the same meta-optimizer step"
        )


def sum_across(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64; inf and NaN propagate)."""
    if not is_distributed():
        return list(values)
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else "cpu"
    buf = torch.tensor(list(values), dtype=torch.float64, device=device)
    _collective("all_reduce(sum)", lambda: dist.all_reduce(buf))
    return buf.tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable; move tensors to the CPU first) as a list on rank 0,
    None elsewhere; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    _collective("gather_object", lambda: dist.gather_object(obj, out, dst=0))
    return out


def from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (e.g. a run folder named after the clock)."""
    if not is_distributed():
        return obj
    box = [obj]
    _collective("broadcast_object", lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def barrier() -> None:
    if is_distributed():
        _collective("barrier", dist.barrier)
