"""What the trainer checks of every meta-step before the learned optimizer sees it (finite inner
losses, updates and meta-loss: else the step is skipped and counted), and the numbers it logs of
one: reasons and counters that ``Trainer.meta_step`` and its all-reduce under torchrun share."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from meta_train.training import distributed as dist

if TYPE_CHECKING:
    from meta_train.inner_loop.unroll import InnerState

SKIP_REASONS = ("inner_loss", "update", "meta_loss")  # checked before the meta-gradient's norm
COUNT_SUFFIX = "particle_steps"  # logged numbers that add up over the ranks (not averaged)


def all_finite(tensors) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in tensors
        if torch.is_tensor(t) and t.is_floating_point()
    )


def state_tensors(state: Any):
    if torch.is_tensor(state):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from state_tensors(value)
    elif isinstance(state, list | tuple):
        for value in state:
            yield from state_tensors(value)


def nonfinite_reason(result: Any, new_inner: InnerState) -> str | None:
    """The first failing check: ``inner_loss`` (some inner loss of the truncation, from a bad
    minibatch or an earlier bad update), ``update`` (losses finite but the new optimizee or
    optimizer state is not), ``meta_loss``; ``meta_grad`` is checked after clipping."""
    if not all_finite([torch.as_tensor(result.inner_losses)]):
        return "inner_loss"
    if not all_finite(state_tensors(new_inner.state_dict())):
        return "update"
    finite = result.finite
    if torch.is_tensor(finite):
        finite = bool(finite.all())
    if not finite or not all_finite([torch.as_tensor(result.meta_loss)]):
        return "meta_loss"
    return None


def result_scalars(result: Any) -> dict[str, float]:
    """The logged numbers of one (finite) meta-step's result, this rank's slice."""
    losses = torch.as_tensor(result.inner_losses).detach().float()
    scalars = {
        "train/meta_loss": float(result.meta_loss),
        "train/inner_loss": float(losses.mean()),
        "train/inner_loss_last": float(losses[..., -1].mean()),
        "train/reg_loss": float(result.reg_loss) if result.reg_loss is not None else 0.0,
    }
    scalars.update({f"train/{k}": v for k, v in getattr(result, "metrics", {}).items()})
    return scalars


def agree_across_ranks(
    reason: str | None, result: Any, params: list[torch.Tensor], world: int
) -> tuple[str | None, dict[str, float], float]:
    """Under torchrun: one all-reduce averages the meta-gradient (before clipping) and the
    logged numbers over the ranks and tells every rank whether any rank's step was
    non-finite, so all skip together, with the first reason in :data:`SKIP_REASONS` order;
    counts (:data:`COUNT_SUFFIX`) are summed. Also returns the seconds the all-reduce took."""
    votes = [1.0 if reason == r else 0.0 for r in SKIP_REASONS]
    # Every rank sends the same keys (the estimator's metrics have fixed names); a skipping
    # rank's numbers may be NaN: the step is then skipped everywhere and nothing is logged.
    scalars = result_scalars(result)
    names = sorted(scalars)
    tic = time.perf_counter()
    votes, values = dist.reduce_meta_step(params, votes, [scalars[k] for k in names])
    seconds = time.perf_counter() - tic
    agreed = next((r for r, v in zip(SKIP_REASONS, votes, strict=True) if v > 0.5), None)
    pairs = zip(names, values, strict=True)
    sums = {k: v * world if k.endswith(COUNT_SUFFIX) else v for k, v in pairs}
    return agreed, sums, seconds
