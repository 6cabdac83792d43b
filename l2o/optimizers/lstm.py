"""The paper's coordinatewise LSTM optimizer (Andrychowicz et al. 2016; Sobotka et al. 2024).

Every coordinate runs through the same two-layer LSTM (hidden 20) with its own recurrent state;
the input is the log/sign-preprocessed gradient (p = 10) plus optional extra features; the update
is ``η_out · Linear(h₂)``. The two stacked ``LSTMCell``s of the paper are one ``nn.LSTM`` with
``num_layers=2`` here (the same function, the same parameter count), so a whole truncation can be
replayed as one fused sequence call.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from l2o.optimizers.base import LearnedOptimizerNet, ParamSpec, State, register
from l2o.optimizers.features import TIME_SCALES, log_sign_preprocess, time_features
from l2o.optimizers.lstm_kernels import (
    LSTMTape,
    TapedUpdates,
    cell_forward,
    fused_lstm_sequence,
    gemm_layers,
    lstm_forward,
    lstm_weights,
    native_kernels,
)

#: Extra per-coordinate inputs the LSTM can take besides the preprocessed gradient, with widths.
EXTRA_INPUTS: dict[str, int] = {
    "momentum": 2,  # log/sign-preprocessed EMA of the gradient (decay 0.9)
    "adam": 1,  # Adam's bias-corrected direction m̂ / (√v̂ + ε), clipped to [-5, 5]
    "param": 1,  # the parameter value itself
    "time": len(TIME_SCALES),  # tanh(t / s - 1) for several timescales s
}


def ema_of_square(v: torch.Tensor, g: torch.Tensor, beta: float) -> torch.Tensor:
    """``β v + (1 - β) g²``, saturating at the dtype's largest value where a finite ``g``
    overflows (``1e30²`` in float32), so the coordinate stays usable as in Adam; a NaN stays NaN.
    (Not ``lerp``: at ``β ≥ 0.5`` it computes ``v - (v - g²)(1 - β)``, which turned an
    overflowed ``v = inf`` into NaN at the next clean step.) ``g`` must not be infinite."""
    return (v * beta).addcmul_(g, g, value=1 - beta).clamp_max_(torch.finfo(v.dtype).max)


@register
class LSTMOptimizer(LearnedOptimizerNet):
    """``LSTM(num_layers × hidden_size) → Linear(hidden_size → 1)``, times ``output_scale``.

    Args:
        hidden_size: LSTM width (paper: 20).
        num_layers: stacked LSTM layers (paper: 2).
        preprocess_p: ``p`` of the log/sign gradient preprocessing (paper: 10).
        output_scale: η_out, the fixed factor on the network's output (paper: 1.0 on the classic
            task, 0.1 in its BatchNorm config).
        extra_inputs: names from ``EXTRA_INPUTS`` added to the input (paper: none).
        beta1, beta2: decays of the momentum / second-moment accumulators for the extras.
    """

    arch: ClassVar[str] = "lstm"
    core_state_keys: ClassVar[tuple[str, ...]] = ("h", "c")
    state_coord_dims: ClassVar[dict[str, int]] = {"h": -2, "c": -2, "m": -1, "v": -1}

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess_p: float = 10.0,
        output_scale: float = 0.1,
        extra_inputs: tuple[str, ...] | list[str] = (),
        beta1: float = 0.9,
        beta2: float = 0.999,
    ) -> None:
        super().__init__()
        extra_inputs = tuple(extra_inputs)
        unknown = [e for e in extra_inputs if e not in EXTRA_INPUTS]
        if unknown:
            raise ValueError(f"unknown extra_inputs {unknown}; available: {sorted(EXTRA_INPUTS)}")
        if len(set(extra_inputs)) != len(extra_inputs):
            raise ValueError(f"extra_inputs has duplicates: {extra_inputs}")
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError("hidden_size and num_layers must be positive")
        if preprocess_p <= 0:
            raise ValueError(f"preprocess_p must be positive, got {preprocess_p}")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError("beta1 and beta2 must lie in [0, 1)")
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.preprocess_p = float(preprocess_p)
        self.output_scale = float(output_scale)
        self.extra_inputs = extra_inputs
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.lstm = nn.LSTM(self.num_features, self.hidden_size, num_layers=self.num_layers)
        self.head = nn.Linear(self.hidden_size, 1)
        #: run the LSTM through the hand-written kernels (False: plain ``nn.LSTM``, a reference)
        self.use_fused = True

    def config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "preprocess_p": self.preprocess_p,
            "output_scale": self.output_scale,
            "extra_inputs": list(self.extra_inputs),
            "beta1": self.beta1,
            "beta2": self.beta2,
        }

    @property
    def num_features(self) -> int:
        return 2 + sum(EXTRA_INPUTS[e] for e in self.extra_inputs)

    @property
    def _needs_m(self) -> bool:
        return "momentum" in self.extra_inputs or "adam" in self.extra_inputs

    def init_state(self, flat_params: torch.Tensor, spec: ParamSpec | None = None) -> State:
        lead, n = flat_params.shape[:-1], flat_params.shape[-1]
        zeros = lambda *shape: flat_params.new_zeros(shape)
        state: State = {
            "h": zeros(self.num_layers, *lead, n, self.hidden_size),
            "c": zeros(self.num_layers, *lead, n, self.hidden_size),
            "t": torch.zeros(lead, dtype=torch.long, device=flat_params.device),
        }
        if self._needs_m:
            state["m"] = zeros(*lead, n)
        if "adam" in self.extra_inputs:
            state["v"] = zeros(*lead, n)
        return state

    def observe(
        self, grads: torch.Tensor, params: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        new = dict(state)
        t = state["t"] + 1
        new["t"] = t
        # an infinite gradient is no gradient: NaN (inf·0), so its coordinate's update is NaN
        # (as Adam's inf/inf) instead of whatever the saturated gates make of it
        grads = grads + grads * 0.0
        parts = [log_sign_preprocess(grads, self.preprocess_p)]
        if self._needs_m:
            new["m"] = torch.lerp(grads, state["m"], self.beta1)
        for extra in self.extra_inputs:
            if extra == "momentum":
                parts.append(log_sign_preprocess(new["m"], self.preprocess_p))
            elif extra == "adam":
                new["v"] = ema_of_square(state["v"], grads, self.beta2)
                tt = t.unsqueeze(-1).to(grads.dtype)  # the counter is an integer
                m_hat = new["m"] / (1 - self.beta1**tt)
                v_hat = new["v"] / (1 - self.beta2**tt)
                # clamp before the root: its derivative at v = 0 would be infinite (second order)
                denom = v_hat.clamp_min(1e-20).sqrt() + 1e-8
                parts.append((m_hat / denom).clamp(-5, 5).unsqueeze(-1))
            elif extra == "param":
                parts.append(params.unsqueeze(-1))
            elif extra == "time":
                tf = time_features(t, dtype=grads.dtype).unsqueeze(-2)
                parts.append(tf.expand(*grads.shape, tf.shape[-1]))
        return torch.cat(parts, dim=-1), new

    def core(self, features: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        seq, lead_n, n_feat = features.shape[0], features.shape[1:-1], features.shape[-1]
        if n_feat != self.num_features:
            raise ValueError(f"LSTMOptimizer expects {self.num_features} features, got {n_feat}")
        rows = math.prod(lead_n)
        h0 = state["h"].reshape(self.num_layers, rows, self.hidden_size)
        c0 = state["c"].reshape(self.num_layers, rows, self.hidden_size)
        x = features.reshape(seq, rows, n_feat)
        out, h, c = self._run_lstm(x, h0, c0)
        updates = self.head(out).squeeze(-1) * self.output_scale
        new = dict(state)
        new["h"] = h.reshape(state["h"].shape)
        new["c"] = c.reshape(state["c"].shape)
        return updates.reshape(seq, *lead_n), new

    def new_tape(self, steps: int, params: torch.Tensor) -> LSTMTape | None:
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())
        usable = (
            self.use_fused
            and not hooked  # the tape runs no module: hooks need the autograd path
            and params.device.type == "cpu"
            and params.dtype == torch.float32
            and native_kernels() is not None
        )
        if not usable:
            return None
        sizes = (steps, params.numel(), self.num_features, self.num_layers, self.hidden_size)
        tape = self.__dict__.get("_spare_tape")
        if tape is None or not tape.reusable(*sizes, params):
            # a tape is ~100 MB for the classic task: reusing it spares the page faults of
            # fresh memory at every truncation
            tape = LSTMTape(*sizes, params)
            self.__dict__["_spare_tape"] = tape
        tape.t = 0
        tape.shape = params.shape
        wts, biases, head_w, head_b = self._kernel_weights()
        tape.weights, tape.head = (wts, biases), (head_w, head_b)
        return tape

    @torch.no_grad()
    def _kernel_weights(self):
        """The layers as the C++ kernels take them (``gemm_layers``) and the head with η_out
        folded in: ``(wts, biases, head_w [H], head_b float)``."""
        wts, biases = gemm_layers([w.detach() for w in lstm_weights(self.lstm)])
        head_w = (self.head.weight[0] * self.output_scale).contiguous()
        return wts, biases, head_w, float(self.head.bias) * self.output_scale

    @torch.no_grad()
    def core_taped(
        self, features: torch.Tensor, state: State, tape: LSTMTape
    ) -> tuple[torch.Tensor, State]:
        lead_n, rows = features.shape[:-1], features[..., 0].numel()
        layers, hidden = self.num_layers, self.hidden_size
        upd, h, c = tape.step(
            features.reshape(rows, -1),
            state["h"].reshape(layers, rows, hidden),
            state["c"].reshape(layers, rows, hidden),
            *tape.weights,
            *tape.head,
        )
        if tape.t == tape.steps:  # the final state outlives the tape: own copies
            h, c = h.clone(), c.clone()
        new = dict(state)
        new["h"] = h.view(state["h"].shape)
        new["c"] = c.view(state["c"].shape)
        return upd.view(lead_n), new

    def taped_updates(self, tape: LSTMTape) -> torch.Tensor:
        params = [*lstm_weights(self.lstm), self.head.weight, self.head.bias]
        return TapedUpdates.apply(tape, self.output_scale, *params).view(tape.steps, *tape.shape)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_spare_tape", None)  # scratch memory, not part of the optimizer
        return state

    def _run_lstm(self, x, h0, c0):
        if not self.use_fused:
            out, (h, c) = self.lstm(x, (h0.contiguous(), c0.contiguous()))
            return out, h, c
        weights = lstm_weights(self.lstm)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, h0, c0, *weights)):
            return fused_lstm_sequence(x, h0, c0, weights)
        with torch.no_grad():
            grouped = [tuple(weights[i : i + 4]) for i in range(0, len(weights), 4)]
            return lstm_forward(x, h0, c0, grouped)

    @torch.no_grad()
    def apply_updates_(
        self, tensors: list[tuple[torch.Tensor, torch.Tensor, State]], chunk_size: int
    ) -> None:
        """Deployment: per chunk of coordinates, the features, then the LSTM in place on the
        state: the C++ step (cache-sized row blocks, the update added to the parameters) or,
        without it, the layers on preallocated buffers."""
        ref = tensors[0][0]
        ext = native_kernels() if ref.dtype == torch.float32 and ref.device.type == "cpu" else None
        wts, biases, head_w, head_b = self._kernel_weights()
        if ext is not None:
            for param, grad, state in tensors:
                for lo in range(0, param.shape[-1], chunk_size):
                    hi = min(lo + chunk_size, param.shape[-1])
                    part = self._observe_in_place(grad, param, state, lo, hi)
                    h, c = state["h"][:, lo:hi], state["c"][:, lo:hi]
                    x = part.contiguous()
                    ext.lstm_step_forward(x, h, c, h, c, wts, biases, head_w, head_b,
                                          param[lo:hi], True)  # fmt: skip
                state["t"].add_(1)
            return
        layers = list(zip(wts, biases, strict=True))
        rows = min(chunk_size, max(p.shape[-1] for p, _, _ in tensors))
        z_bufs = [ref.new_empty(rows, w.shape[0]) for w, _ in layers]
        pre_buf = ref.new_empty(rows, 4 * self.hidden_size)
        for param, grad, state in tensors:
            h_all, c_all = state["h"], state["c"]
            for lo in range(0, param.shape[-1], chunk_size):
                hi = min(lo + chunk_size, param.shape[-1])
                inp = self._observe_in_place(grad, param, state, lo, hi)
                for layer, (w_t, bias) in enumerate(layers):
                    n_in = inp.shape[-1]
                    z = z_bufs[layer][: hi - lo]
                    h, c = h_all[layer, lo:hi], c_all[layer, lo:hi]
                    z[:, :n_in].copy_(inp)
                    z[:, n_in:].copy_(h)
                    pre = torch.addmm(bias, z, w_t, out=pre_buf[: hi - lo])
                    h_new, c_new = cell_forward(pre, c)
                    h.copy_(h_new)
                    c.copy_(c_new)
                    inp = h
                param[lo:hi].add_(torch.mv(inp, head_w).add_(head_b))
            state["t"].add_(1)

    def _observe_in_place(self, grad, param, state, lo, hi) -> torch.Tensor:
        """Features of coordinates ``lo:hi``, their accumulators advanced in ``state``."""
        part = self.slice_state(state, lo, hi)
        features, new = self.observe(grad[lo:hi], param[lo:hi], part)
        for k in ("m", "v"):
            if k in new:
                part[k].copy_(new[k])
        return features
