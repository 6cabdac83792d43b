"""Fused Triton kernels of the deployment step of ``mlp`` and ``general``: the CUDA path of
``LearnedOptimizer`` (``l2o.optimizers.deploy_backend`` chooses it).

Imported lazily (only where a step runs on it), so the package imports on machines without
triton. Under ``TRITON_INTERPRET=1`` (set before triton is imported) the same kernels run on CPU
tensors: that is how the tests compare them with the PyTorch path.

A step over the T tensors of one device makes the passes of the C++ CPU kernels, with no host
synchronization:

1. ``_advance_and_moments`` (per tensor): the momenta and the second moment advanced in place,
   and each program's sums of the raw features' squares over the FINITE entries (in float64,
   where no finite float32 squares to infinity) and their counts, as ``finite_square_sums``;
   with ``general``'s ``mix`` also those of the nominal direction;
2. batched over the T tensors (device ops): the feature scales folded into the first layer's
   weights, the time (and progress) features into its bias; for ``general`` the step size, the
   nominal direction's coefficients and ρ (the nominal step's RMS over the tensor);
3. ``_network_pass`` (per tensor): features, network and update, in place for ``mlp`` and for
   ``general`` without output normalization; with it, the direction ``d`` is written out with
   its square sums and the nominal step ``lr·n`` is subtracted;
4. ``_normalized_residual_pass`` (``general`` with output normalization): ``lr·gain·ρ·d/RMS(d)``
   added once RMS(d) is known.

The arithmetic is the PyTorch path's, IEEE throughout: a NaN or infinity reaches the update of
its own coordinate as it does there (ReLU keeps NaN) and never enters another coordinate's
statistics. Not covered (``deploy_backend.uncovered``; the PyTorch path runs them): ``factored``
features, the ``orthogonal`` nominal term, networks of more than two hidden layers, subclasses
of the two architectures.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import nn

from l2o.optimizers.features import inverse_rms, time_features
from l2o.optimizers.general import LARS_TINY, OUTPUT_EPS, GeneralOptimizer
from l2o.optimizers.mlp import NORM_EPS, MLPOptimizer

__all__ = ["apply_updates_"]

#: Coordinates per program iteration of the statistics and the network passes.
STATS_BLOCK = 1024
NETWORK_BLOCK = 128
#: Programs per tensor and pass at most (each loops over its share of the coordinates): the
#: statistics pass writes one row of partial sums per program.
MAX_PROGRAMS = 1024

# the per-tensor step coefficients (a [T, 7] float32 tensor), by column
_LR = tl.constexpr(0)  # exp(log lr_t)
_GAIN = tl.constexpr(1)  # the residual gain
_RHO = tl.constexpr(2)  # ρ: the RMS of the nominal step over the tensor (1 for adam, none)
_C_ADAM = tl.constexpr(3)  # the nominal direction is c_adam · adam + c_mom · m_β
_C_MOM = tl.constexpr(4)
_DEN1 = tl.constexpr(5)  # Adam's bias corrections 1 - β₁^t, 1 - β₂^t
_DEN2 = tl.constexpr(6)
_NUM_COEFS = 7

#: ``nominal`` as the kernels' NOMINAL code: what the nominal direction ``n`` is built from.
_NOMINAL_CODES = {"none": 0, "adam": 1, "sgdm": 2, "lars": 2, "mix": 3}
# MODE of ``_network_pass``
_MLP, _GENERAL_IN_PLACE, _GENERAL_NORMALIZED = 0, 1, 2


@triton.jit
def _lerp(start, end, weight):
    """``torch.lerp``'s formula (exact at both ends) for a scalar weight."""
    return tl.where(
        weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight)
    )


@triton.jit
def _coordinates(start, n, g_ptr, p_ptr, v_ptr, D: tl.constexpr, BLOCK: tl.constexpr):
    """The block of coordinates from ``start``: offsets, mask, offsets of their rows of ``m``
    (int64: ``n · D`` may pass 2³¹), gradients, parameters and second moments."""
    offs = start + tl.arange(0, BLOCK)
    inside = offs < n
    g = tl.load(g_ptr + offs, mask=inside, other=0.0)
    p = tl.load(p_ptr + offs, mask=inside, other=0.0)
    v = tl.load(v_ptr + offs, mask=inside, other=0.0)
    return offs, inside, offs.to(tl.int64) * D, g, p, v


@triton.jit
def _add_moment(acc_s, acc_c, slots, k, x, inside):
    """Adds Σ x² and the count over the finite entries of ``x`` to slot ``k`` of the float64
    accumulators (a NaN fails the comparison, an infinity exceeds the largest float)."""
    finite = inside & (tl.abs(x) <= 3.4028234663852886e38)
    x64 = tl.where(finite, x, 0.0).to(tl.float64)
    acc_s += tl.where(slots == k, tl.sum(x64 * x64, axis=0), 0.0)
    acc_c += tl.where(slots == k, tl.sum(finite.to(tl.int32), axis=0).to(tl.float64), 0.0)
    return acc_s, acc_c


@triton.jit
def _adam_direction(m, v, den1, den2, eps):
    """Adam's bias-corrected ``m̂ / (√v̂ + ε)``, as ``GeneralOptimizer.adam_direction``."""
    return (m / den1) / (tl.sqrt_rn(v / den2) + eps)


@triton.jit
def _nominal_direction(m_adam, m_mom, v, coef_ptr, eps, NOMINAL: tl.constexpr):
    """The nominal direction ``n`` (NOMINAL 1: adam, 2: a momentum column, 3: mix)."""
    if NOMINAL == 1:
        n = _adam_direction(m_adam, v, tl.load(coef_ptr + _DEN1), tl.load(coef_ptr + _DEN2), eps)
    elif NOMINAL == 2:
        n = m_mom * tl.load(coef_ptr + _C_MOM)
    else:
        adam = _adam_direction(m_adam, v, tl.load(coef_ptr + _DEN1), tl.load(coef_ptr + _DEN2), eps)
        n = tl.load(coef_ptr + _C_ADAM) * adam + tl.load(coef_ptr + _C_MOM) * m_mom
    return n


@triton.jit
def _advance_and_moments(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    mom_weight_ptr,  # [D] 1 - momentum decays (float32)
    rms_weight,  # 1 - rms_decay
    coef_ptr,  # this tensor's coefficients (mix only)
    part_ptr,  # this tensor's [programs, 2, SLOTS] partial sums (float64)
    n,
    adam_eps,
    D: tl.constexpr,
    SLOTS: tl.constexpr,
    MIX_STAT: tl.constexpr,
    ADAM_IDX: tl.constexpr,
    MOM_IDX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pass 1: ``m_i ← lerp(m_i, g, 1 - β_i)``, ``v ← lerp(v, g², 1 - β₂)`` in place; slot k of
    this program's row gets Σ x_k² and the count over the finite entries of raw feature k (g,
    p, m_1..m_D, v, m_i·rsqrt(v + 1e-8), rsqrt(v + 1e-8); with MIX_STAT the nominal direction
    last)."""
    pid = tl.program_id(0)
    slots = tl.arange(0, SLOTS)
    acc_s = tl.zeros([SLOTS], tl.float64)
    acc_c = tl.zeros([SLOTS], tl.float64)
    for start in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs, inside, row, g, p, v = _coordinates(start, n, g_ptr, p_ptr, v_ptr, D, BLOCK)
        v = _lerp(v, g * g, rms_weight)
        tl.store(v_ptr + offs, v, mask=inside)
        rs = 1.0 / tl.sqrt_rn(v + 1e-8)
        acc_s, acc_c = _add_moment(acc_s, acc_c, slots, 0, g, inside)
        acc_s, acc_c = _add_moment(acc_s, acc_c, slots, 1, p, inside)
        acc_s, acc_c = _add_moment(acc_s, acc_c, slots, 2 + D, v, inside)
        acc_s, acc_c = _add_moment(acc_s, acc_c, slots, 3 + 2 * D, rs, inside)
        if MIX_STAT:
            # the two columns the nominal direction needs, advanced below by the same operations
            m_adam = tl.load(m_ptr + row + ADAM_IDX, mask=inside, other=0.0)
            m_mom = tl.load(m_ptr + row + MOM_IDX, mask=inside, other=0.0)
            m_adam = _lerp(m_adam, g, tl.load(mom_weight_ptr + ADAM_IDX))
            m_mom = _lerp(m_mom, g, tl.load(mom_weight_ptr + MOM_IDX))
            nominal = _nominal_direction(m_adam, m_mom, v, coef_ptr, adam_eps, 3)
            acc_s, acc_c = _add_moment(acc_s, acc_c, slots, 4 + 2 * D, nominal, inside)
        for i in tl.static_range(D):
            m_i = tl.load(m_ptr + row + i, mask=inside, other=0.0)
            m_i = _lerp(m_i, g, tl.load(mom_weight_ptr + i))
            tl.store(m_ptr + row + i, m_i, mask=inside)
            acc_s, acc_c = _add_moment(acc_s, acc_c, slots, 2 + i, m_i, inside)
            acc_s, acc_c = _add_moment(acc_s, acc_c, slots, 3 + D + i, m_i * rs, inside)
    tl.store(part_ptr + pid * 2 * SLOTS + slots, acc_s)
    tl.store(part_ptr + pid * 2 * SLOTS + SLOTS + slots, acc_c)


@triton.jit
def _first_layer_input(acc, x, w1_ptr, k, cols, hid, F0: tl.constexpr):
    """``acc [BLOCK, H] += x [BLOCK] ⊗ W₁[:, k]`` (the folded first layer is ``[H, F0]``)."""
    w = tl.load(w1_ptr + cols * F0 + k, mask=hid, other=0.0)
    return acc + x[:, None] * w[None, :]


@triton.jit
def _unit(h, w_ptr, j, cols, hid, width):
    """Output ``j`` of a dense layer ``[out, width]`` (no bias) over the hidden rows ``h``."""
    w = tl.load(w_ptr + j * width + cols, mask=hid, other=0.0)
    return tl.sum(h * w[None, :], axis=1)


@triton.jit
def _network_pass(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    w1_ptr,  # this tensor's folded first layer [H1, F0] and bias [H1]
    b1_ptr,
    w2_ptr,  # the output layer [2, H1], or (H2 > 0) the second layer [H2, H1]
    b2_ptr,
    w3_ptr,  # (H2 > 0) the output layer [2, H2]
    b3_ptr,
    coef_ptr,  # this tensor's coefficients (general)
    d_ptr,  # (output normalization) the directions [n]
    part_ptr,  # (output normalization) this tensor's [programs, 2] partial sums of d²
    n,
    step_mult,
    exp_mult,
    adam_eps,
    D: tl.constexpr,
    H1: tl.constexpr,
    H1P: tl.constexpr,
    H2: tl.constexpr,
    MODE: tl.constexpr,
    NOMINAL: tl.constexpr,
    ADAM_IDX: tl.constexpr,
    MOM_IDX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pass 2: per coordinate the raw features, the network (ReLU keeps NaN), and
    MODE 0 (mlp): ``p += step_mult · d · exp(exp_mult · m)``;
    MODE 1 (general): ``p += lr · (gain · ρ · d · exp(exp_mult · m) − n)``;
    MODE 2 (general, output normalization): ``d`` stored, ``p -= lr · n``, Σ d² and the count
    over the finite entries into this program's row."""
    F0: tl.constexpr = 2 * D + 4
    pid = tl.program_id(0)
    cols = tl.arange(0, H1P)
    hid = cols < H1
    b1 = tl.load(b1_ptr + cols, mask=hid, other=0.0)
    d_sum = tl.zeros([BLOCK], tl.float64)
    d_count = tl.zeros([BLOCK], tl.int32)
    for start in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs, inside, row, g, p, v = _coordinates(start, n, g_ptr, p_ptr, v_ptr, D, BLOCK)
        rs = 1.0 / tl.sqrt_rn(v + 1e-8)
        acc = tl.zeros([BLOCK, H1P], tl.float32) + b1[None, :]
        acc = _first_layer_input(acc, g, w1_ptr, 0, cols, hid, F0)
        acc = _first_layer_input(acc, p, w1_ptr, 1, cols, hid, F0)
        for i in tl.static_range(D):
            m_i = tl.load(m_ptr + row + i, mask=inside, other=0.0)
            acc = _first_layer_input(acc, m_i, w1_ptr, 2 + i, cols, hid, F0)
            acc = _first_layer_input(acc, m_i * rs, w1_ptr, 3 + D + i, cols, hid, F0)
        acc = _first_layer_input(acc, v, w1_ptr, 2 + D, cols, hid, F0)
        acc = _first_layer_input(acc, rs, w1_ptr, 3 + 2 * D, cols, hid, F0)
        # ReLU that keeps NaN (a maximum would not); padded units are exactly 0
        h = tl.where(hid[None, :], tl.where(acc < 0.0, 0.0, acc), 0.0)
        if H2 == 0:
            out_d = _unit(h, w2_ptr, 0, cols, hid, H1) + tl.load(b2_ptr)
            out_m = _unit(h, w2_ptr, 1, cols, hid, H1) + tl.load(b2_ptr + 1)
        else:
            out_d = tl.zeros([BLOCK], tl.float32) + tl.load(b3_ptr)
            out_m = tl.zeros([BLOCK], tl.float32) + tl.load(b3_ptr + 1)
            for j in range(H2):
                u = _unit(h, w2_ptr, j, cols, hid, H1) + tl.load(b2_ptr + j)
                u = tl.where(u < 0.0, 0.0, u)
                out_d += u * tl.load(w3_ptr + j)
                out_m += u * tl.load(w3_ptr + H2 + j)
        if MODE == 0:
            update = tl.exp(out_m * exp_mult) * out_d * step_mult
            tl.store(p_ptr + offs, p + update, mask=inside)
        else:
            lr = tl.load(coef_ptr + _LR)
            if NOMINAL != 0:
                m_adam = tl.load(m_ptr + row + ADAM_IDX, mask=inside, other=0.0)
                m_mom = tl.load(m_ptr + row + MOM_IDX, mask=inside, other=0.0)
                nominal = _nominal_direction(m_adam, m_mom, v, coef_ptr, adam_eps, NOMINAL)
            if MODE == 1:
                residual = out_d * tl.exp(exp_mult * out_m)
                step = tl.load(coef_ptr + _GAIN) * (tl.load(coef_ptr + _RHO) * residual)
                if NOMINAL != 0:
                    step = step - nominal
                tl.store(p_ptr + offs, p + lr * step, mask=inside)
            else:
                tl.store(d_ptr + offs, out_d, mask=inside)
                if NOMINAL != 0:
                    tl.store(p_ptr + offs, p - lr * nominal, mask=inside)
                finite = inside & (tl.abs(out_d) <= 3.4028234663852886e38)
                d64 = tl.where(finite, out_d, 0.0).to(tl.float64)
                d_sum += d64 * d64
                d_count += finite.to(tl.int32)
    if MODE == 2:
        tl.store(part_ptr + pid * 2, tl.sum(d_sum, axis=0))
        tl.store(part_ptr + pid * 2 + 1, tl.sum(d_count, axis=0).to(tl.float64))


@triton.jit
def _normalized_residual_pass(p_ptr, d_ptr, coef_ptr, inv_rms_ptr, n, BLOCK: tl.constexpr):
    """Pass 3 (output normalization): ``p += lr · (gain · (ρ · d / RMS(d)))``."""
    lr = tl.load(coef_ptr + _LR)
    gain = tl.load(coef_ptr + _GAIN)
    rho = tl.load(coef_ptr + _RHO)
    inv_rms = tl.load(inv_rms_ptr)
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < n
        d = tl.load(d_ptr + offs, mask=inside, other=0.0)
        p = tl.load(p_ptr + offs, mask=inside, other=0.0)
        tl.store(p_ptr + offs, p + lr * (gain * (rho * (d * inv_rms))), mask=inside)


# ------------------------------------------------------------------------------------------------
# The step


def _programs(n: int, block: int) -> int:
    return max(1, min(triton.cdiv(n, block), MAX_PROGRAMS))


def _rms(square_sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """RMS over the finite entries from float64 sums, as ``general.tensor_rms`` (float32)."""
    return (square_sums / counts.clamp_min(1.0)).sqrt().to(torch.float32)


def _linears(net: MLPOptimizer) -> list[nn.Linear]:
    return [m for m in net.net if isinstance(m, nn.Linear)]


def _column_indices(net: MLPOptimizer) -> dict[str, int]:
    """The momentum columns of Adam's β₁ and of the SGD/LARS momentum (``general``)."""
    return {"ADAM_IDX": getattr(net, "adam_index", 0), "MOM_IDX": getattr(net, "sgdm_index", 0)}


def _advance(net: MLPOptimizer, tensors, pre: torch.Tensor | None):
    """Pass 1 over every tensor (``pre [T, 7]``: the coefficients ``mix`` needs there, else
    None); returns the float64 square sums ``[T, SLOTS]`` and counts over finite entries."""
    d = len(net.momentum_decays)
    slots = triton.next_power_of_2(2 * d + 4 + int(pre is not None))
    programs = [_programs(p.numel(), STATS_BLOCK) for p, _, _ in tensors]
    device = tensors[0][0].device
    part = torch.zeros(len(tensors), max(programs), 2, slots, dtype=torch.float64, device=device)
    mom_weights = (1 - net._decays).to(device=device, dtype=torch.float32).contiguous()
    for i, ((param, grad, state), grid) in enumerate(zip(tensors, programs)):
        _advance_and_moments[(grid,)](
            param, grad, state["m"], state["v"], mom_weights, 1.0 - net.rms_decay,
            mom_weights if pre is None else pre[i], part[i], param.numel(),
            getattr(net, "adam_eps", 0.0), D=d, SLOTS=slots, MIX_STAT=pre is not None,
            BLOCK=STATS_BLOCK, **_column_indices(net),
        )  # fmt: skip
    totals = part.sum(1)
    return totals[:, 0], totals[:, 1]


def _folded_first_layer(net: MLPOptimizer, sums, counts, glob: torch.Tensor):
    """The first layer with each tensor's feature scales folded into its weights ``[T, H, F0]``
    and the global (time) features into its bias ``[T, H]``, as ``apply_updates_`` folds them."""
    f0 = net.num_normalized_features
    if net.per_tensor_norm:
        scales = inverse_rms(sums[:, :f0], counts[:, :f0], NORM_EPS, torch.float32)
    else:
        total = inverse_rms(sums[:, :f0].sum(0), counts[:, :f0].sum(0), NORM_EPS, torch.float32)
        scales = total.expand(sums.shape[0], f0)
    first = _linears(net)[0]
    w1 = (first.weight[:, :f0] * scales.unsqueeze(1)).contiguous()
    b1 = (first.bias + glob @ first.weight[:, f0:].t()).contiguous()
    return w1, b1


def _nominal_coefficients(net: GeneralOptimizer, t: torch.Tensor) -> torch.Tensor:
    """``[T, 7]`` coefficients with the nominal direction's columns filled (``_C_ADAM``,
    ``_C_MOM``, ``_DEN1``, ``_DEN2``; ``lars``'s ``_C_MOM`` needs pass 1's RMSs): what pass 1
    needs for ``mix``'s ρ."""
    tf = t.to(torch.float32)
    coefs = torch.zeros(t.shape[0], _NUM_COEFS, device=t.device)
    coefs[:, _DEN1.value] = 1 - net.adam_beta1**tf
    coefs[:, _DEN2.value] = 1 - net.rms_decay**tf
    coefs[:, _C_ADAM.value] = 1.0
    if net.nominal == "mix":
        w = torch.sigmoid(net.mix_logit)
        lrs = torch.exp(net.nominal_log_lrs)
        coefs[:, _C_ADAM.value] = w * lrs[0]
        coefs[:, _C_MOM.value] = (1 - w) * lrs[1] / (1 - net.sgdm_beta)
    elif net.nominal == "sgdm":
        coefs[:, _C_MOM.value] = 1 / (1 - net.sgdm_beta)
    return coefs


def _step_coefficients(net: GeneralOptimizer, coefs, t, horizon, glob, sums, counts) -> None:
    """Fills the step size, the gain and ρ (and ``lars``'s ``_C_MOM``) from pass 1's sums."""
    coefs[:, _LR.value] = torch.exp(net.log_lr(glob, net.log_base_schedule(t, horizon)))
    coefs[:, _GAIN.value] = net.residual_gain
    mom = 2 + net.sgdm_index
    mom_rms = _rms(sums[:, mom], counts[:, mom])
    if net.nominal == "lars":
        param_rms = _rms(sums[:, 1], counts[:, 1]).clamp_min(net.lars_floor)
        coefs[:, _C_MOM.value] = param_rms / mom_rms.clamp_min(LARS_TINY)
    if net.nominal in ("sgdm", "lars"):
        coefs[:, _RHO.value] = coefs[:, _C_MOM.value] * mom_rms
    elif net.nominal == "mix":
        f0 = net.num_normalized_features
        coefs[:, _RHO.value] = _rms(sums[:, f0], counts[:, f0])
    else:
        coefs[:, _RHO.value] = 1.0


def _network_layers(net: MLPOptimizer) -> dict[str, torch.Tensor | int]:
    """The layers after the first as ``_network_pass`` takes them (``H2``: the second hidden
    layer's width, 0 without one)."""
    hidden = [(lin.weight.contiguous(), lin.bias.contiguous()) for lin in _linears(net)[1:]]
    (w2, b2), (w3, b3) = hidden[0], hidden[-1]
    return {
        "w2_ptr": w2,
        "b2_ptr": b2,
        "w3_ptr": w3,
        "b3_ptr": b3,
        "H2": w2.shape[0] if len(hidden) > 1 else 0,
    }


@torch.no_grad()
def apply_updates_(net: MLPOptimizer, tensors: list[tuple[torch.Tensor, ...]]) -> None:
    """One deployment step of ``net`` (an ``MLPOptimizer`` or ``GeneralOptimizer`` that
    ``deploy_backend.uncovered`` accepts) on ``(param, grad, state)`` triples of one device:
    flat contiguous float32 parameters and gradients, states from ``net.init_state``, all
    updated in place as ``net.apply_updates_`` updates them."""
    device = tensors[0][0].device
    # triton launches on the current CUDA device: make it the tensors' own
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _step(net, tensors)


def _step(net: MLPOptimizer, tensors: list[tuple[torch.Tensor, ...]]) -> None:
    general = isinstance(net, GeneralOptimizer)
    counters = [state["t"] for _, _, state in tensors]
    t = torch.stack(counters) + 1
    torch._foreach_add_(counters, 1)
    if not general:
        sums, counts = _advance(net, tensors, None)
        w1, b1 = _folded_first_layer(net, sums, counts, time_features(t))
        _run_network(net, tensors, w1, b1, w1, _MLP, 0)
        return
    horizon = torch.stack([state["horizon"] for _, _, state in tensors])
    glob = net.global_features({"t": t, "horizon": horizon})
    coefs = _nominal_coefficients(net, t)
    sums, counts = _advance(net, tensors, coefs if net.nominal == "mix" else None)
    w1, b1 = _folded_first_layer(net, sums, counts, glob)
    _step_coefficients(net, coefs, t, horizon, glob, sums, counts)
    mode = _GENERAL_NORMALIZED if net.normalize_output else _GENERAL_IN_PLACE
    _run_network(net, tensors, w1, b1, coefs, mode, _NOMINAL_CODES[net.nominal])


def _run_network(net, tensors, w1, b1, coefs, mode: int, nominal: int) -> None:
    """Pass 2 over every tensor, and with output normalization pass 3."""
    normalized = mode == _GENERAL_NORMALIZED
    sizes = [p.numel() for p, _, _ in tensors]
    programs = [_programs(n, NETWORK_BLOCK) for n in sizes]
    # with output normalization: the directions, and each program's sums of their squares
    directions = w1.new_empty(sum(sizes) if normalized else 0)
    rows = (len(tensors), max(programs), 2) if normalized else (len(tensors), 1, 2)
    part = torch.zeros(rows, dtype=torch.float64, device=w1.device)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    h1 = w1.shape[1]
    constants = dict(
        step_mult=getattr(net, "step_mult", 1.0), exp_mult=net.exp_mult,
        adam_eps=getattr(net, "adam_eps", 0.0), D=len(net.momentum_decays), H1=h1,
        H1P=triton.next_power_of_2(h1), MODE=mode, NOMINAL=nominal, BLOCK=NETWORK_BLOCK,
        **_network_layers(net), **_column_indices(net),
    )  # fmt: skip
    for i, ((param, grad, state), n, grid) in enumerate(zip(tensors, sizes, programs)):
        _network_pass[(grid,)](
            param, grad, state["m"], state["v"], w1[i], b1[i], coef_ptr=coefs[i],
            d_ptr=directions[offsets[i] : offsets[i] + n] if normalized else param,
            part_ptr=part[i], n=n, **constants,
        )  # fmt: skip
    if not normalized:
        return
    totals = part.sum(1)
    inv_rms = inverse_rms(totals[:, 0], totals[:, 1], OUTPUT_EPS, torch.float32).contiguous()
    for i, ((param, _, _), n) in enumerate(zip(tensors, sizes)):
        _normalized_residual_pass[(_programs(n, STATS_BLOCK),)](
            param, directions[offsets[i] : offsets[i] + n], coefs[i], inv_rms[i], n,
            BLOCK=STATS_BLOCK,
        )  # fmt: skip
