"""``LearnedOptimizer``: a trained learned optimizer as an ordinary ``torch.optim.Optimizer``.

    opt = LearnedOptimizer.from_pretrained("lstm-mnist", model.parameters())
    for x, y in batches:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

Each parameter tensor keeps its own slice of the optimizer's per-coordinate state (so the usual
``state_dict`` / ``load_state_dict`` round trip works). A step runs the network without a graph,
over chunks of coordinates small enough to stay in cache, and updates the parameters in place.
The updates equal those of the network's ``step`` on the flat vector of all parameters (the
meta-training path), chunking aside.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from l2o.optimizers.base import LearnedOptimizerNet
from l2o.optimizers.checkpoint_io import load_learned_optimizer

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def available_pretrained() -> list[str]:
    """Names accepted by ``LearnedOptimizer.from_pretrained``."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def pretrained_path(name: str) -> Path:
    path = PRETRAINED_DIR / f"{name}.pt"
    if not path.is_file():
        raise ValueError(
            f"no pretrained learned optimizer {name!r}; available: {available_pretrained()}"
        )
    return path


class LearnedOptimizer(torch.optim.Optimizer):
    """Apply a (frozen) learned optimizer to any parameters.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        net: a ``LearnedOptimizerNet``, or the path of a checkpoint saved by
            ``l2o.optimizers.checkpoint_io.save_learned_optimizer``.
        chunk_size: coordinates processed at a time (memory/cache trade-off; no effect on the
            result beyond float rounding); None: the network's ``deploy_chunk_size``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        net: LearnedOptimizerNet | str | os.PathLike,
        chunk_size: int | None = None,
    ) -> None:
        if isinstance(net, str | os.PathLike):
            net, self.metadata = load_learned_optimizer(net)
        else:
            self.metadata = {}
        if not isinstance(net, LearnedOptimizerNet):
            raise TypeError(f"net must be a LearnedOptimizerNet or a checkpoint path, got {net!r}")
        chunk_size = net.deploy_chunk_size if chunk_size is None else int(chunk_size)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        super().__init__(params, {"arch": net.arch})
        self.net = net
        self.chunk_size = int(chunk_size)
        for p in self.net.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, name: str, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], **kwargs: Any
    ) -> LearnedOptimizer:
        """A shipped checkpoint by name (see ``available_pretrained()``)."""
        return cls(params, pretrained_path(name), **kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        triples = []
        write_back = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LearnedOptimizer does not support sparse gradients")
                state = self.state[p]
                if not state:
                    self._move_net(p.device)
                    state.update(self.net.init_state(p.detach().reshape(-1)))
                flat = p.view(-1) if p.is_contiguous() else p.detach().reshape(-1).clone()
                if not p.is_contiguous():
                    write_back.append((p, flat))
                triples.append((flat, p.grad.reshape(-1), state))
        if triples:
            self.net.apply_updates_(triples, self.chunk_size)
        for p, flat in write_back:
            p.copy_(flat.view_as(p))
        return loss

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer keeps only defaults, state and param_groups: without the
        # network, a deep copy or an unpickled optimizer could not step
        state = super().__getstate__()
        state.update(net=self.net, chunk_size=self.chunk_size, metadata=self.metadata)
        return state

    def _move_net(self, device: torch.device) -> None:
        first = next(iter(self.net.parameters()), None)
        if first is not None and first.device != device:
            self.net.to(device)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {g.get("arch") for g in state_dict.get("param_groups", [])}
        if saved and saved != {self.net.arch}:
            raise ValueError(
                f"optimizer state was saved by a {sorted(saved)} learned optimizer, "
                f"this one is {self.net.arch!r}"
            )
        super().load_state_dict(state_dict)
