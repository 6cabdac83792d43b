"""``LearnedOptimizer``: a trained learned optimizer as an ordinary ``torch.optim.Optimizer``.

    opt = LearnedOptimizer.from_pretrained("lstm-mnist", model.parameters())
    for x, y in batches:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

Each parameter tensor keeps its own slice of the optimizer's per-coordinate state (so the usual
``state_dict`` / ``load_state_dict`` round trip works). A step runs the network without a graph,
over chunks of coordinates small enough to stay in cache, and updates the parameters in place.
The updates equal those of the network's ``step`` on the flat vector of all parameters (the
meta-training path), chunking aside.

Param groups carry ``lr`` (a multiplier on the learned update, 1.0 by default) and
``weight_decay`` (decoupled, as in AdamW: ``θ ← θ - lr·wd·θ + lr·update``), so torch's lr
schedulers and per-group settings work. Parameters may be float32, float64, float16 or bfloat16:
the network and its state compute in float32 whatever the parameter's dtype (as fused optimizers
keep their state), and each step's update is added in the parameter's precision (float64 stays
float64; a half-precision parameter is rounded once per step). Any device but ``meta``.
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from l2o.optimizers.base import LearnedOptimizerNet, ParamSpec
from l2o.optimizers.checkpoint_io import load_learned_optimizer
from l2o.optimizers.deploy_backend import apply_updates_, check_backend

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
#: The ``state_dict`` entry with the optimizer's horizon and its count of ``step()`` calls.
PROGRESS_KEY = "learned_optimizer"


def available_pretrained() -> list[str]:
    """Names accepted by ``LearnedOptimizer.from_pretrained``."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def pretrained_path(name: str | os.PathLike) -> Path:
    """The checkpoint ``name`` stands for: an existing file (a relative path is relative to the
    current directory, as everywhere else), else a shipped optimizer's name."""
    path = Path(name)
    if path.is_file():
        return path
    if path.exists():
        raise ValueError(f"{path.resolve()} is not a checkpoint file (a directory?)")
    shipped = PRETRAINED_DIR / f"{name}.pt"
    if isinstance(name, str) and name in available_pretrained():
        return shipped
    raise ValueError(
        f"{str(name)!r} is neither a file ({path.resolve()} does not exist) nor a shipped "
        f"learned optimizer; available: {available_pretrained()}"
    )


#: Device types a step can run on (``meta`` tensors hold no values to update).
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps")
#: Parameter dtypes a step supports; the network and its state compute in float32.
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def takes_total_steps(net: LearnedOptimizerNet) -> bool:
    """True if ``net`` has training-progress inputs (its ``init_state`` takes ``total_steps``)."""
    return "total_steps" in inspect.signature(net.init_state).parameters


class LearnedOptimizer(torch.optim.Optimizer):
    """Apply a (frozen) learned optimizer to any parameters.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        net: a ``LearnedOptimizerNet``, or the path of a checkpoint saved by
            ``l2o.optimizers.checkpoint_io.save_learned_optimizer``.
        chunk_size: coordinates processed at a time (memory/cache trade-off; no effect on the
            result beyond float rounding); None: the network's ``deploy_chunk_size``.
        lr: multiplier on the learned update (per group; what lr schedulers change).
        weight_decay: decoupled weight decay (per group): ``θ ← θ - lr·weight_decay·θ``.
        total_steps: the training horizon, for networks with training-progress inputs (the
            ``general`` architecture's fraction of the horizon completed, as VeLO is told its
            number of steps); None keeps the network's own default. A network without such
            inputs refuses it rather than ignoring it.
        backend: ``"auto"`` (the fused Triton kernels for CUDA parameters where they cover the
            network, else PyTorch), ``"torch"`` or ``"triton"`` (``l2o.optimizers.deploy_backend``).

    ``state_dict`` carries, besides the per-parameter state, the horizon and the count of
    ``step()`` calls (``"learned_optimizer"``). ``load_state_dict`` reconciles the horizon by
    one rule: the optimizer's own ``total_steps`` wins. Loading a state saved by a run of 30
    steps into ``LearnedOptimizer(..., total_steps=300)`` continues to step 300 (every
    parameter's saved horizon becomes 300; kept, a cosine schedule would make every update
    from step 31 on zero); an optimizer made without ``total_steps`` takes the saved one.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        net: LearnedOptimizerNet | str | os.PathLike,
        chunk_size: int | None = None,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        total_steps: int | None = None,
        backend: str = "auto",
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
        if total_steps is not None:
            if isinstance(total_steps, bool) or int(total_steps) != total_steps or total_steps <= 0:
                raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
            if not takes_total_steps(net):
                raise TypeError(
                    f"total_steps: the {net.arch!r} optimizer has no training-progress inputs; "
                    "only architectures whose init_state takes total_steps (e.g. 'general') do"
                )
            total_steps = int(total_steps)
        self.total_steps = total_steps
        self.backend = check_backend(backend, net)
        self._steps_taken = 0  # step() calls, for the past-horizon warning
        self._warned_horizon = False
        super().__init__(params, {"arch": net.arch, "lr": lr, "weight_decay": weight_decay})
        self.net = net
        self.chunk_size = int(chunk_size)
        self._nets: dict[torch.device, LearnedOptimizerNet] = {}
        for p in self.net.parameters():
            p.requires_grad_(False)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key in ("lr", "weight_decay"):
            value = param_group.get(key, self.defaults[key])
            if isinstance(value, torch.Tensor) or not float(value) >= 0.0 or value == float("inf"):
                raise ValueError(f"{key} must be a finite number ≥ 0, got {value!r}")
        super().add_param_group(param_group)

    @classmethod
    def from_pretrained(
        cls,
        name: str | os.PathLike,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        **kwargs: Any,
    ) -> LearnedOptimizer:
        """A shipped optimizer by name (see ``available_pretrained()``) or a checkpoint file
        that exists (relative paths are relative to the current directory; an existing file
        wins over a shipped name)."""
        return cls(params, pretrained_path(name), **kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches = self._batches()  # everything is checked before any parameter changes
        for (device, lr, weight_decay), params in batches.items():
            self._update(params, device, lr, weight_decay)
        self._warn_past_horizon()
        return loss

    def _warn_past_horizon(self) -> None:
        """Warn once when a network whose step size decays to zero at its horizon (``general``
        with a cosine base schedule) is stepped past it: it has stopped training, most likely
        because it was not told the run's length (``total_steps``). Counted in Python: no
        device sync."""
        self.__dict__["_steps_taken"] = self.__dict__.get("_steps_taken", 0) + 1
        horizon = self._horizon()
        if not getattr(self.net, "stops_at_horizon", False) or horizon is None:
            return
        if self._steps_taken > horizon and not self.__dict__.get("_warned_horizon", False):
            self._warned_horizon = True
            warnings.warn(
                f"step {self._steps_taken} is past this learned optimizer's horizon of {horizon} "
                "steps, where its step size has decayed to zero: pass the run's length as "
                "LearnedOptimizer(..., total_steps=N)",
                UserWarning,
                stacklevel=3,
            )

    def _horizon(self) -> int | None:
        """The run length the network is told: ``total_steps``, else the network's own."""
        return getattr(self, "total_steps", None) or getattr(self.net, "total_steps", None)

    def _batches(self) -> dict[tuple, list[torch.Tensor]]:
        """Parameters with gradients by (device, lr, weight decay), all validated."""
        batches: dict[tuple, list[torch.Tensor]] = {}
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                where = f"parameter of shape {tuple(p.shape)} in param group {index}"
                if p.grad.is_sparse:
                    raise RuntimeError("LearnedOptimizer does not support sparse gradients")
                if p.device.type not in SUPPORTED_DEVICE_TYPES:
                    raise ValueError(
                        f"LearnedOptimizer cannot update a {where} on the {p.device.type!r} "
                        f"device; supported: {', '.join(SUPPORTED_DEVICE_TYPES)}"
                    )
                if p.dtype not in SUPPORTED_DTYPES:
                    raise TypeError(
                        f"LearnedOptimizer cannot update a {p.dtype} {where}; supported: "
                        f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}"
                    )
                if p.grad.shape != p.shape or p.grad.device != p.device:
                    raise ValueError(f"the gradient of a {where} has another shape or device")
                key = (p.device, group["lr"], group["weight_decay"])
                batches.setdefault(key, []).append(p)
        return batches

    def _update(self, params, device, lr, weight_decay) -> None:
        """One step of the network on ``params`` (one device): in place on contiguous float32
        parameters when the update is plain, else on float32 working copies whose change
        (times ``lr``, after the decay) is added in each parameter's own precision."""
        net = self._net_for(device)
        plain = lr == 1.0 and weight_decay == 0.0
        triples, write_back = [], []
        for p in params:
            in_place = plain and p.dtype == torch.float32 and p.is_contiguous()
            flat = p.view(-1) if in_place else p.detach().reshape(-1).to(torch.float32, copy=True)
            state = self.state[p]
            if not state:
                steps = getattr(self, "total_steps", None)  # None in pickles from before it
                horizon = {} if steps is None else {"total_steps": steps}
                shape = ParamSpec(("param",), (tuple(p.shape),))  # for per-shape state
                state.update(net.init_state(flat, shape, **horizon))
            triples.append((flat, p.grad.reshape(-1).to(torch.float32), state))
            if not in_place:
                write_back.append((p, flat, flat.clone()))
        apply_updates_(net, triples, self.chunk_size, self.__dict__.get("backend", "auto"))
        for p, flat, before in write_back:
            new = p.detach().reshape(-1).to(torch.promote_types(p.dtype, torch.float32), copy=True)
            if weight_decay:
                new.mul_(1.0 - lr * weight_decay)
            new.add_(flat.sub_(before), alpha=lr)
            p.copy_(new.view_as(p))

    def _net_for(self, device: torch.device) -> LearnedOptimizerNet:
        """The network on ``device``: ``self.net`` itself where it already is, else a copy made
        once (the network is frozen; ``self.net`` never moves)."""
        first = next(iter(self.net.parameters()), None)
        if first is None or first.device == device:
            return self.net
        nets = self.__dict__.setdefault("_nets", {})
        if device not in nets:
            nets[device] = copy.deepcopy(self.net).to(device=device)
        return nets[device]

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer keeps only defaults, state and param_groups: without the
        # network, a deep copy or an unpickled optimizer could not step
        state = super().__getstate__()
        state.update(
            net=self.net,
            chunk_size=self.chunk_size,
            metadata=self.metadata,
            total_steps=self.total_steps,
            backend=self.__dict__.get("backend", "auto"),
            _steps_taken=self.__dict__.get("_steps_taken", 0),
            _warned_horizon=self.__dict__.get("_warned_horizon", False),
        )
        return state

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state[PROGRESS_KEY] = {
            "total_steps": self.total_steps,
            "steps_taken": self.__dict__.get("_steps_taken", 0),
            "warned_past_horizon": self.__dict__.get("_warned_horizon", False),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {g.get("arch") for g in state_dict.get("param_groups", [])}
        if saved and saved != {self.net.arch}:
            raise ValueError(
                f"optimizer state was saved by a {sorted(saved)} learned optimizer, "
                f"this one is {self.net.arch!r}"
            )
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # saved before groups carried them
            for key in ("lr", "weight_decay"):
                group.setdefault(key, self.defaults[key])
        # torch casts floating state to each parameter's dtype (a bfloat16 step counter stops
        # counting at 256): keep the saved float32 state as it was saved
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            if i in state_dict["state"]:
                self.state[p] = {
                    k: v.to(device=p.device, copy=True) if isinstance(v, torch.Tensor) else v
                    for k, v in state_dict["state"][i].items()
                }
        self._restore_progress(state_dict.get(PROGRESS_KEY, {}))

    def _restore_progress(self, saved: dict[str, Any]) -> None:
        """The horizon by the class docstring's rule (the own ``total_steps`` wins, else the
        saved one), and the step count; a state saved before it carried the count gives the
        largest step counter of its parameters (one read, at load time)."""
        if self.total_steps is None:
            self.total_steps = saved.get("total_steps")
        if self.total_steps is not None:
            for state in self.state.values():
                if "horizon" in state:
                    state["horizon"] = torch.full_like(state["horizon"], float(self.total_steps))
        steps = saved.get("steps_taken")
        if steps is None:
            counters = [s["t"] for s in self.state.values() if isinstance(s.get("t"), torch.Tensor)]
            steps = max((int(t.max()) for t in counters if t.numel()), default=0)
        self._steps_taken = int(steps)
        horizon = self._horizon()
        passed = horizon is not None and self._steps_taken > horizon
        self._warned_horizon = bool(saved.get("warned_past_horizon", False)) and passed
