"""The learned-optimizer interface and the flat-parameter utilities every optimizer shares.

A learned optimizer sees the optimizee as ONE flat vector of all its coordinates (``[..., N]``,
leading dims are a meta-batch of optimizees) and runs its network once per inner step over all of
them. ``ParamSpec`` maps between a dict of named tensors and that vector.

Every network is split into two parts, so that meta-training can choose how to differentiate it:

* ``observe(grads, params, state) -> (features, state)``: the bookkeeping that does not depend
  on the meta-parameters (gradient preprocessing, momenta, normalization, time features);
* ``core(features_seq, state) -> (updates_seq, state)``: the learned network, applied to a
  whole sequence of per-step features ``[T, ..., N, F]`` at once.

``step`` is ``observe`` followed by ``core`` on a length-1 sequence. In first-order
meta-training the optimizer's inputs are constants, so the unroll can run ``step`` without a
graph, keep the features, and later *replay* ``core`` over the whole truncation in one
differentiable call (see ``meta_train.estimators.truncated_bptt``).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of the tensors packed into one flat vector of ``numel`` coords."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError("ParamSpec: names and shapes differ in length")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ParamSpec: duplicate names in {self.names}")

    @classmethod
    def from_named(cls, named: Iterable[tuple[str, torch.Tensor]]) -> ParamSpec:
        items = list(named)
        return cls(tuple(n for n, _ in items), tuple(tuple(t.shape) for _, t in items))

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamSpec:
        return cls.from_named(module.named_parameters())

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.numels:
            out.append(acc)
            acc += n
        return tuple(out)

    @property
    def numel(self) -> int:
        return sum(self.numels)

    def flatten(self, tensors: Mapping[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
        """``{name: [*batch, *shape]} -> [*batch, N]`` (a copy, in this spec's order)."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise ValueError(f"ParamSpec.flatten: missing tensors {missing}")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            t = tensors[name]
            if tuple(t.shape[batch_dims:]) != shape:
                raise ValueError(
                    f"ParamSpec.flatten: {name!r} has shape {tuple(t.shape[batch_dims:])}, "
                    f"expected {shape}"
                )
            parts.append(t.reshape(*t.shape[:batch_dims], -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., N] -> {name: [..., *shape]}``: views into ``flat``, no copy."""
        if flat.shape[-1] != self.numel:
            raise ValueError(f"ParamSpec.unflatten: last dim {flat.shape[-1]} != {self.numel}")
        lead = flat.shape[:-1]
        chunks = torch.split(flat, list(self.numels), dim=-1)
        return {
            n: c.reshape((*lead, *s))
            for n, s, c in zip(self.names, self.shapes, chunks, strict=True)
        }

    def segment_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``[N]`` int64: the index of the tensor each coordinate belongs to."""
        sizes = torch.tensor(self.numels, device=device)
        return torch.repeat_interleave(torch.arange(len(self.names), device=device), sizes)


def segment_mean(x: torch.Tensor, segment_ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-tensor mean of ``x [..., N, F]`` over its coordinates, broadcast back to ``[..., N, F]``.

    One ``index_add`` over all coordinates (no loop per tensor). ``counts [S]`` are segment sizes.
    """
    n_seg = counts.shape[0]
    coord_dim = x.dim() - 2
    sums = torch.zeros(*x.shape[:coord_dim], n_seg, x.shape[-1], dtype=x.dtype, device=x.device)
    sums = sums.index_add(coord_dim, segment_ids, x)
    means = sums / counts.to(x.dtype).unsqueeze(-1)
    return means.index_select(coord_dim, segment_ids)


class LearnedOptimizerNet(nn.Module, abc.ABC):
    """A coordinatewise learned optimizer (see the module docstring for the two-part design).

    Sign convention: ``updates`` are ADDED to the parameters, ``θ ← θ + updates``.
    States are ``dict[str, Tensor]``; every tensor has the coordinates' leading dims ``[..., N]``
    or is documented otherwise (``"t"``, the per-optimizee step counter, is ``[...]``).
    """

    arch: ClassVar[str] = ""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (plain Python values) that rebuild this architecture."""

    @property
    def num_features(self) -> int:
        """The width ``F`` of the per-coordinate features that ``core`` consumes."""
        raise NotImplementedError

    @abc.abstractmethod
    def init_state(self, flat_params: torch.Tensor, spec: ParamSpec | None = None) -> State:
        """The state before the first step for parameters ``[..., N]``.

        ``spec`` (optional) tells which coordinates belong to which tensor, for per-tensor
        features; without it the whole vector is one tensor.
        """

    @abc.abstractmethod
    def observe(
        self, grads: torch.Tensor, params: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """Per-coordinate features ``[..., N, F]`` and the state with its bookkeeping advanced.

        Must not depend on the meta-parameters (it is replayed as a constant in first-order mode).
        """

    @abc.abstractmethod
    def core(self, features: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Updates ``[T, ..., N]`` for a sequence of features ``[T, ..., N, F]``.

        Must give the same result as ``T`` calls on length-1 slices in order; only the keys it
        owns (``core_state_keys``) change in the returned state.
        """

    core_state_keys: ClassVar[tuple[str, ...]] = ()

    #: For each per-coordinate state tensor, the dim that indexes coordinates (counted from the
    #: end, e.g. ``-2`` for ``[L, ..., N, H]``); keys not listed are shared by all coordinates.
    state_coord_dims: ClassVar[dict[str, int]] = {}

    #: Coordinates per chunk in a ``LearnedOptimizer`` step (cache-sized working set).
    deploy_chunk_size: ClassVar[int] = 16384

    #: True if coordinate ``i``'s updates depend only on coordinate ``i``'s features and state
    #: (so replay may run in chunks of coordinates).
    coordinatewise: ClassVar[bool] = True

    def step(
        self, grads: torch.Tensor, params: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """One optimizer step over all coordinates: ``(updates [..., N], new_state)``."""
        if grads.shape != params.shape:
            raise ValueError(f"grads {tuple(grads.shape)} and params {tuple(params.shape)} differ")
        features, state = self.observe(grads, params, state)
        updates, state = self.core(features.unsqueeze(0), state)
        return updates.squeeze(0), state

    def new_tape(self, steps: int, params: torch.Tensor) -> Any | None:
        """A tape for a first-order truncation of ``steps`` steps on ``params [..., N]`` (see
        ``core_taped``), or None: the optimizer has no taped path here, and the meta-gradient
        comes from autograd through ``core``."""
        return None

    def core_taped(
        self, features: torch.Tensor, state: State, tape: Any
    ) -> tuple[torch.Tensor, State]:
        """``core`` for one step (features ``[..., N, F]``, no graph), recorded on ``tape``."""
        raise NotImplementedError(f"{type(self).__name__} has no taped path")

    def taped_updates(self, tape: Any) -> torch.Tensor:
        """The updates ``[T, ..., N]`` of a filled tape, differentiable w.r.t. the parameters
        (their backward is the first-order meta-gradient of the truncation)."""
        raise NotImplementedError(f"{type(self).__name__} has no taped path")

    def slice_state(self, state: State, lo: int, hi: int) -> State:
        """The state of coordinates ``lo:hi`` (views; shared entries as they are)."""
        return {
            k: v.narrow(v.dim() + self.state_coord_dims[k], lo, hi - lo)
            if k in self.state_coord_dims
            else v
            for k, v in state.items()
        }

    @torch.no_grad()
    def apply_updates_(
        self, tensors: list[tuple[torch.Tensor, torch.Tensor, State]], chunk_size: int
    ) -> None:
        """Deployment: one step in place, without a graph, for ``(param, grad, state)`` triples.

        ``param`` and ``grad`` are flat ``[n]`` views, ``state`` that tensor's state (from
        ``init_state(param)``), updated in place. The default runs ``step`` on chunks of
        ``chunk_size`` coordinates, which needs an ``observe`` without cross-coordinate
        statistics; optimizers override it with faster or non-local paths.
        """
        for param, grad, state in tensors:
            n = param.shape[-1]
            new_shared: State = {}
            for lo in range(0, n, chunk_size):
                hi = min(lo + chunk_size, n)
                part = self.slice_state(state, lo, hi)
                upd, new = self.step(grad[lo:hi], param[lo:hi], part)
                param[lo:hi] += upd
                for k, v in new.items():
                    if k in self.state_coord_dims:
                        part[k].copy_(v)
                    else:
                        new_shared[k] = v
            for k, v in new_shared.items():
                state[k].copy_(v)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


_REGISTRY: dict[str, type[LearnedOptimizerNet]] = {}


def register(cls: type[LearnedOptimizerNet]) -> type[LearnedOptimizerNet]:
    """Class decorator: make an architecture creatable by its ``arch`` name."""
    if not cls.arch:
        raise ValueError(f"{cls.__name__} has no arch name")
    if cls.arch in _REGISTRY and _REGISTRY[cls.arch] is not cls:
        raise ValueError(f"learned-optimizer architecture {cls.arch!r} is already registered")
    _REGISTRY[cls.arch] = cls
    return cls


def available_architectures() -> list[str]:
    return sorted(_REGISTRY)


def create(arch: str, **kwargs: Any) -> LearnedOptimizerNet:
    """A fresh learned optimizer by architecture name, e.g. ``create("lstm", hidden_size=20)``."""
    if arch not in _REGISTRY:
        import difflib

        near = difflib.get_close_matches(arch, _REGISTRY, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ValueError(
            f"unknown learned-optimizer architecture {arch!r}.{hint} "
            f"Available: {available_architectures()}"
        )
    return _REGISTRY[arch](**kwargs)
