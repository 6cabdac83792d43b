"""Many copies of one learned optimizer, each with its own weights, stepping as one batch.

Evolution-strategy estimators (``es``, ``pes``) evaluate the optimizer at P perturbed weight
vectors φ_p. Every particle trains its own optimizee; all P of them step together: the
optimizee gradients of all particles come from one ``vmap``, ``observe`` (which does not depend on
the weights) runs on ``[P, N]`` directly, and the network runs once over all particles with
per-particle weights (``particle_core``): batched matmuls for the LSTM (its fused kernels have no
batching rule) and the MLP (one ``bmm`` per layer, bias and ReLU in place: cheaper than ``vmap``'s
linear), ``torch.func.vmap`` over ``functional_call`` for any other architecture. No step
builds an autograd graph and no step reads a value back to the host.

``Population`` holds the particles' inner state (parameters, buffers, optimizer state) with the
particle index as a known dimension of every tensor, so that the particles of one task can be
restarted in place (``restart``) and the whole state saved and restored bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call, vmap

from l2o.optimizers.base import LearnedOptimizerNet, ParamSpec, State
from l2o.optimizers.features import time_features
from l2o.optimizers.lstm import LSTMOptimizer
from l2o.optimizers.lstm_kernels import cell_forward
from l2o.optimizers.mlp import NORM_EPS, MLPOptimizer
from l2o.optimizers.native import NATIVE_MIN_ROWS, native_kernels


def meta_spec(lopt: LearnedOptimizerNet) -> ParamSpec:
    """The layout of the meta-parameters φ (the trainable weights) as one flat vector."""
    return ParamSpec.from_named((n, p) for n, p in lopt.named_parameters() if p.requires_grad)


def flat_meta_params(lopt: LearnedOptimizerNet) -> torch.Tensor:
    """φ as one detached vector ``[D]`` in ``meta_spec`` order."""
    spec = meta_spec(lopt)
    named = dict(lopt.named_parameters())
    return spec.flatten({n: named[n].detach() for n in spec.names})


def particle_weights(spec: ParamSpec, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-particle weights ``{name: [P, *shape]}`` from flat vectors ``[P, D]`` (views)."""
    return spec.unflatten(flat)


# ------------------------------------------------------------------------------------------------
# The network over all particles


def _lstm_core(
    lopt: LSTMOptimizer, weights: dict[str, torch.Tensor], features: torch.Tensor, state: State
) -> tuple[torch.Tensor, State]:
    """One LSTM step for P particles: ``features [P, N, F]``, ``h, c [L, P, N, H]``."""
    x = features
    hs, cs = [], []
    for layer in range(lopt.num_layers):
        w_ih = weights[f"lstm.weight_ih_l{layer}"]  # [P, 4H, in]
        w_hh = weights[f"lstm.weight_hh_l{layer}"]  # [P, 4H, H]
        bias = weights[f"lstm.bias_ih_l{layer}"] + weights[f"lstm.bias_hh_l{layer}"]  # [P, 4H]
        # bmm then a broadcast add_: baddbmm's broadcast copy of the bias is slower on the CPU
        pre = torch.bmm(x, w_ih.transpose(1, 2)).add_(bias.unsqueeze(1))
        pre = pre.baddbmm_(state["h"][layer], w_hh.transpose(1, 2))
        h, c = cell_forward(pre, state["c"][layer])
        hs.append(h)
        cs.append(c)
        x = h
    head = torch.bmm(x, weights["head.weight"].transpose(1, 2)).add_(
        weights["head.bias"].unsqueeze(1)
    )
    new = dict(state)
    new["h"], new["c"] = torch.stack(hs), torch.stack(cs)
    return head.squeeze(-1) * lopt.output_scale, new


def _mlp_core(
    lopt: MLPOptimizer, weights: dict[str, torch.Tensor], features: torch.Tensor, state: State
) -> tuple[torch.Tensor, State]:
    """One MLP-optimizer step for P particles: one ``bmm`` per layer, bias and ReLU in place."""
    x = features
    linears = [i for i, m in enumerate(lopt.net) if isinstance(m, torch.nn.Linear)]
    for k, i in enumerate(linears):
        w, b = weights[f"net.{i}.weight"], weights[f"net.{i}.bias"]
        x = torch.bmm(x, w.transpose(1, 2)).add_(b.unsqueeze(1))
        if k < len(linears) - 1:
            x.relu_()
    upd = x[..., 1].mul_(lopt.exp_mult).exp_().mul_(x[..., 0]).mul_(lopt.step_mult)
    return upd, state


def _vmapped_core(
    lopt: LearnedOptimizerNet,
    weights: dict[str, torch.Tensor],
    features: torch.Tensor,
    state: State,
    pdims: dict[str, int | None],
) -> tuple[torch.Tensor, State]:
    """``lopt.core`` under ``vmap`` over the particle dim of weights, features and core state."""
    keys = [k for k in lopt.core_state_keys if pdims.get(k) is not None]
    dims = {k: pdims[k] for k in keys}
    upd, new_core = vmap(_CoreCall(lopt, state, keys), in_dims=(0, 0, dims), out_dims=(0, dims))(
        weights, features, {k: state[k] for k in keys}
    )
    return upd, {**state, **new_core}


class _CoreModule(torch.nn.Module):
    """``lopt.core`` for one particle as a module's ``forward`` (what ``functional_call`` runs):
    ``(features [N, F], core_state) -> (updates [N], core_state)``."""

    def __init__(self, lopt: LearnedOptimizerNet, state: State, keys: list[str]) -> None:
        super().__init__()
        self.lopt = lopt
        self.state, self.keys = state, keys

    def forward(self, feat, core_state):
        upd, new = self.lopt.core(feat.unsqueeze(0), {**self.state, **core_state})
        return upd[0], {k: new[k] for k in self.keys}


class _CoreCall:
    """The vmapped function: ``_CoreModule`` with ``weights`` in place of the parameters."""

    def __init__(self, lopt: LearnedOptimizerNet, state: State, keys: list[str]) -> None:
        self.module = _CoreModule(lopt, state, keys)

    def __call__(self, weights, feat, core_state):
        named = {f"lopt.{k}": v for k, v in weights.items()}
        return functional_call(self.module, named, (feat, core_state), strict=False)


def particle_core(
    lopt: LearnedOptimizerNet,
    weights: dict[str, torch.Tensor],
    features: torch.Tensor,
    state: State,
    pdims: dict[str, int | None],
) -> tuple[torch.Tensor, State]:
    """Updates ``[P, N]`` of particle p's weights ``weights[·][p]`` on its features
    ``features [P, N, F]`` and state; the same as P calls of ``lopt.core`` (tested)."""
    if isinstance(lopt, LSTMOptimizer):
        return _lstm_core(lopt, weights, features, state)
    if _is_plain_mlp(lopt):
        return _mlp_core(lopt, weights, features, state)
    return _vmapped_core(lopt, weights, features, state, pdims)


def _is_plain_mlp(lopt: LearnedOptimizerNet) -> bool:
    """``MLPOptimizer`` itself (subclasses such as ``general`` change ``core``), Linear/ReLU."""
    return type(lopt) is MLPOptimizer and all(
        isinstance(m, torch.nn.Linear | torch.nn.ReLU) for m in lopt.net
    )


class NativeMLPStep:
    """``observe`` + ``particle_core`` of the plain MLP optimizer for all particles in two fused
    C++ passes (``kernels.cpp``: ``mlp_particles_accumulate_``, ``mlp_particles_update_``), the
    way its deployment step runs: the first pass advances the momenta and sums each raw
    feature's square per particle and tensor; the per-tensor normalization is then folded into
    each particle's first-layer weights and its time features into its bias, and the second
    pass builds the features and runs the network block by block in cache. No ``[P, N, F]``
    feature tensor is ever built.

    It works in place on copies of the parameters and accumulators taken at construction (the
    estimators keep the truncation's starting state to go back to). One difference from
    ``observe``: its statistics skip non-finite entries, so a bad coordinate stays on its own;
    here a non-finite (or float32-overflowing) statistic makes every coordinate of that tensor
    NaN. Both leave the particle non-finite, and the estimators discard a truncation with any
    non-finite particle, so the estimate is the same."""

    def __init__(self, ext, lopt: MLPOptimizer, weights: dict[str, torch.Tensor], pop) -> None:
        self.ext, self.lopt = ext, lopt
        counts = pop.opt_state["segment_counts"]
        self.offsets = [0, *torch.cumsum(counts, 0).tolist()]  # segments are contiguous
        self.counts = counts.to(torch.float64).unsqueeze(-1)  # [S, 1]
        self.decays = list(lopt.momentum_decays)
        f0 = lopt.num_normalized_features
        names = [f"net.{i}" for i, m in enumerate(lopt.net) if isinstance(m, torch.nn.Linear)]
        w1 = weights[f"{names[0]}.weight"]  # [P, H, F]
        self.w1_raw, self.w1_time = w1[..., :f0].unsqueeze(1), w1[..., f0:]
        self.b1 = weights[f"{names[0]}.bias"]
        self.weights = [weights[f"{n}.weight"].contiguous() for n in names[1:]]
        self.biases = [weights[f"{n}.bias"].contiguous() for n in names[1:]]

    @classmethod
    def for_population(cls, lopt, weights, pop) -> NativeMLPStep | None:
        """The fused step where it applies: the plain MLP optimizer, float32 on the CPU, the
        kernels built, enough rows to pay off; else None (the PyTorch path)."""
        params = pop.params
        if not _is_plain_mlp(lopt) or params.device.type != "cpu":
            return None
        if params.dtype != torch.float32 or params.numel() < NATIVE_MIN_ROWS:
            return None
        ext = native_kernels()
        return None if ext is None else cls(ext, lopt, weights, pop)

    def start(self, params: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Private copies of what the steps change in place."""
        m, v = state["m"].clone(), state["v"].clone()
        return params.clone(), {**state, "m": m, "v": v}

    def __call__(
        self, params: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """One step of every particle, in place on ``params`` and the accumulators."""
        grad = grad.contiguous()
        m, v, t = state["m"], state["v"], state["t"] + 1
        lopt = self.lopt
        sums = self.ext.mlp_particles_accumulate_(
            params, grad, m, v, self.decays, lopt.rms_decay, self.offsets
        )  # [P, S, F0], float64
        scale = torch.rsqrt(sums / self.counts + NORM_EPS)
        scale = torch.where(torch.isfinite(sums), scale, math.nan).to(params.dtype)
        w1 = (self.w1_raw * scale.unsqueeze(2)).contiguous()  # [P, S, H, F0]
        tf = time_features(t, dtype=params.dtype)  # [P, T]
        b1 = torch.baddbmm(self.b1.unsqueeze(-1), self.w1_time, tf.unsqueeze(-1)).squeeze(-1)
        self.ext.mlp_particles_update_(
            params,
            grad,
            m,
            v,
            w1,
            b1,
            self.weights,
            self.biases,
            self.offsets,
            lopt.step_mult,
            lopt.exp_mult,
        )
        return params, {**state, "m": m, "v": v, "t": t}


# ------------------------------------------------------------------------------------------------
# The particles' inner state


def particle_dims(
    lopt: LearnedOptimizerNet, n: int, spec: ParamSpec | None, device: torch.device
) -> dict[str, int | None]:
    """For each optimizer-state key, the dim that indexes optimizees (None: shared by all).

    Found by building the state for 2 and 3 optimizees and seeing which dim changes, so it
    holds for any architecture without a list of its keys."""
    two = lopt.init_state(torch.zeros(2, n, device=device), spec)
    three = lopt.init_state(torch.zeros(3, n, device=device), spec)
    dims: dict[str, int | None] = {}
    for key, a in two.items():
        b = three[key]
        diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
        dims[key] = diff[0] if diff else None
    return dims


def _select(x: torch.Tensor, dim: int | None, index: torch.Tensor) -> torch.Tensor:
    return x if dim is None else x.index_select(dim, index)


def _where(mask: torch.Tensor, dim: int | None, new: torch.Tensor, old: torch.Tensor):
    if dim is None:
        return old
    shape = [1] * old.dim()
    shape[dim] = -1
    return torch.where(mask.view(shape), new, old)


@dataclass
class Population:
    """P particles' optimizees: ``params [P, N]``, ``buffers {k: [P, ...]}``, the optimizer
    state with its particle dims ``pdims``; ``task_index [P]`` maps particles to tasks."""

    params: torch.Tensor
    buffers: dict[str, torch.Tensor]
    opt_state: State
    pdims: dict[str, int | None]
    task_index: torch.Tensor

    @classmethod
    def replicate(
        cls,
        lopt: LearnedOptimizerNet,
        params: torch.Tensor,
        buffers: dict[str, torch.Tensor],
        opt_state: State,
        task_index: torch.Tensor,
    ) -> Population:
        """Particles that continue the tasks' optimizees AND optimizer states (particle p a copy
        of task ``task_index[p]``)."""
        # found on the meta device: shapes only, no host-to-device copy at every truncation
        pdims = particle_dims(lopt, params.shape[1], None, torch.device("meta"))
        return cls(
            params.index_select(0, task_index),
            {k: v.index_select(0, task_index) for k, v in buffers.items()},
            {k: _select(v, pdims[k], task_index) for k, v in opt_state.items()},
            pdims,
            task_index,
        )

    def restart(self, mask: torch.Tensor, fresh: Population) -> None:
        """Particles with ``mask [P]`` set take their state from ``fresh`` (same layout)."""
        self.params = torch.where(mask.unsqueeze(1), fresh.params, self.params)
        self.buffers = {k: _where(mask, 0, fresh.buffers[k], v) for k, v in self.buffers.items()}
        self.opt_state = {
            k: _where(mask, self.pdims[k], fresh.opt_state[k], v) for k, v in self.opt_state.items()
        }

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, dict, State]:
        """``(params, buffers, opt_state)`` of the particles ``index`` (copies)."""
        return (
            self.params.index_select(0, index),
            {k: v.index_select(0, index) for k, v in self.buffers.items()},
            {k: _select(v, self.pdims[k], index) for k, v in self.opt_state.items()},
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"params": self.params.clone(), "task_index": self.task_index.clone()}
        out.update({f"buffers.{k}": v.clone() for k, v in self.buffers.items()})
        out.update({f"opt_state.{k}": v.clone() for k, v in self.opt_state.items()})
        return out

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], pdims: dict[str, int | None], device
    ) -> Population:
        return cls(
            state["params"].to(device),
            {k[8:]: v.to(device) for k, v in state.items() if k.startswith("buffers.")},
            {k[10:]: v.to(device) for k, v in state.items() if k.startswith("opt_state.")},
            pdims,
            state["task_index"].to(device),
        )


Batches = Callable[[], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def unroll_particles(
    lopt: LearnedOptimizerNet,
    optimizee,
    weights: dict[str, torch.Tensor],
    pop: Population,
    next_batch: Batches,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` inner steps of every particle, in place on ``pop``; returns the losses
    ``[P, steps]`` (loss of θ_k before its update) and the per-particle finiteness ``[P]`` of
    the final parameters (device tensors: nothing is read back here).

    ``next_batch() -> (x, y)`` gives one minibatch per TASK (``[T, ...]``); every particle of a
    task sees its task's batch (common random numbers across a pair)."""
    optimizee = for_particles(optimizee, pop.task_index)
    losses = pop.params.new_empty(pop.params.shape[0], steps)
    params, state = pop.params, pop.opt_state
    fused = NativeMLPStep.for_population(lopt, weights, pop)
    if fused is not None:
        params, state = fused.start(params, state)
    for k in range(steps):
        x, y = next_batch()
        x, y = x.index_select(0, pop.task_index), y.index_select(0, pop.task_index)
        loss, grad = optimizee.loss_and_grad(params, pop.buffers, x, y)
        losses[:, k] = loss
        if fused is not None:
            params, state = fused(params, grad, state)
            continue
        features, state = lopt.observe(grad, params, state)
        upd, state = particle_core(lopt, weights, features, state, pop.pdims)
        params = params + upd
    pop.params, pop.opt_state = params, state
    finite = torch.isfinite(params).all(1)
    return losses, finite


def for_particles(optimizee, task_index: torch.Tensor):
    """The optimizee as the particles see it: one whose per-task settings (e.g. a family's
    augmentations, ``meta_train.inner_loop.families``) are gathered to the particles; plain ones as
    is."""
    select = getattr(optimizee, "select", None)
    return select(task_index) if select is not None else optimizee


def particle_tasks(num_tasks: int, pairs: int, device) -> torch.Tensor:
    """The task of each of the ``2 · pairs · T`` particles, laid out ``[sign, pair, task]``:
    particles ``[0, pairs·T)`` are the positive ones, ``[pairs·T, 2·pairs·T)`` their antithetic
    twins in the same order, and particle ``t`` is task t's first positive one."""
    return torch.arange(num_tasks, device=device).repeat(2 * pairs)


def antithetic_weights(phi: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Flat particle weights ``[2M, D]``: ``φ + ε_m`` then ``φ − ε_m`` for ``eps [M, D]``."""
    return torch.cat((phi + eps, phi - eps))
