"""A hand-written multi-layer LSTM over many independent rows (coordinates), forward and
backward, for the coordinatewise LSTM optimizer.

Why not ``nn.LSTM``: on the CPU its oneDNN backward is slow for this shape (tens of thousands to
millions of rows, 20 units), and autograd through ``LSTMCell`` writes and re-reads a dozen
``[rows, 80]`` temporaries per step. Here one time step of all layers is one autograd node
(``FusedLSTMStep``) that saves only its inputs and outputs; its backward recomputes the gate
pre-activations with one GEMM per layer and runs ONE elementwise pass (C++ kernels in
``kernels.cpp``, see ``l2o.optimizers.native``, with plain PyTorch ops as the fallback).
Meta-training's tape (``LSTMTape``, ``TapedUpdates``) runs ``lstm_tape.cpp`` instead: whole steps
and the whole backward through time with rows in SIMD lanes, no autograd graph.

``fused_lstm(lstm, x, h0, c0)`` returns what ``lstm(x, (h0, c0))`` returns, for a plain
``nn.LSTM`` (weights in its order and gate layout i, f, g, o).
"""

from __future__ import annotations

import torch

from l2o.optimizers.native import NATIVE_MIN_ROWS, native_kernels


def cell_forward(pre: torch.Tensor, c_prev: torch.Tensor):
    """Elementwise part of a cell: ``(h, c)`` from gate pre-activations ``[M, 4H]`` (i, f, g, o)."""
    i, f, g, o = pre.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def _cell_backward(pre: torch.Tensor, c_prev: torch.Tensor, dh: torch.Tensor, dc: torch.Tensor):
    """Gradients of the pre-activations and of ``c_prev``, recomputing the gates from ``pre``
    (so the forward saves no gate activations)."""
    i, f, g, o = pre.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c_prev + i * g
    tc = torch.tanh(c)
    dc = dh * o * (1 - tc * tc) + dc
    dpre = torch.cat(
        (
            dc * g * i * (1 - i),
            dc * c_prev * f * (1 - f),
            dc * i * (1 - g * g),
            dh * tc * o * (1 - o),
        ),
        dim=-1,
    )
    return dpre, dc * f


def _kernels(x: torch.Tensor):
    """``(forward, backward)`` elementwise cell functions for inputs like ``x``."""
    if x.shape[0] >= NATIVE_MIN_ROWS and x.device.type == "cpu" and x.dtype == torch.float32:
        ext = native_kernels()
        if ext is not None:
            return _contiguous(ext.cell_forward), _contiguous(ext.cell_backward)
    return cell_forward, _cell_backward


def _contiguous(fn):
    return lambda *args: fn(*(a.contiguous() for a in args))


def _layer_weights(w_ih, w_hh, b_ih, b_hh):
    """``[W_ih | W_hh]`` (4H × (F+H)) and ``b_ih + b_hh``: a layer as one GEMM on ``[x | h]``."""
    return torch.cat((w_ih, w_hh), dim=1), b_ih + b_hh


def lstm_step(x, h0, c0, weights):
    """One time step of all layers: ``x [M, F]``, ``h0, c0 [L, M, H]`` → ``(out, hn, cn)``."""
    fwd, _ = _kernels(x)
    inp, hs, cs = x, [], []
    for layer, w in enumerate(weights):
        w_cat, bias = _layer_weights(*w)
        z = torch.cat((inp, h0[layer]), dim=1)
        h, c = fwd(torch.addmm(bias, z, w_cat.t()), c0[layer])
        hs.append(h)
        cs.append(c)
        inp = h
    return inp, torch.stack(hs), torch.stack(cs)


def lstm_forward(x, h0, c0, weights):
    """``nn.LSTM`` without a graph over ``x [T, M, F]``: ``(out [T, M, H], hn, cn)``."""
    outs = []
    for t in range(x.shape[0]):
        out, h0, c0 = lstm_step(x[t], h0, c0, weights)
        outs.append(out)
    return torch.stack(outs), h0, c0


class FusedLSTMStep(torch.autograd.Function):
    """One time step of a multi-layer LSTM with a hand-written backward.

    Saves only references to its inputs and outputs (``x``, ``h0``, ``c0``, ``hn``; in an unroll
    ``hn`` is the next step's ``h0``, so a step costs ``F + 2·L·H`` floats per row); the backward
    recomputes each layer's gate pre-activations with one GEMM, runs one fused elementwise pass,
    and gets the input and weight gradients with one GEMM each. Returns ``(hn, cn)``; the
    output sequence is ``hn[-1]``.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, *flat_weights):
        weights = [tuple(flat_weights[i : i + 4]) for i in range(0, len(flat_weights), 4)]
        _, hn, cn = lstm_step(x, h0, c0, weights)
        ctx.save_for_backward(x, h0, c0, hn, *flat_weights)
        ctx.num_layers = len(weights)
        return hn, cn

    @staticmethod
    def backward(ctx, dhn, dcn):
        x, h0, c0, hn, *flat = ctx.saved_tensors
        num_layers = ctx.num_layers
        _, bwd = _kernels(x)
        grads: list[torch.Tensor | None] = [None] * len(flat)
        dh0 = [None] * num_layers
        dc0 = [None] * num_layers
        d_out = None
        for layer in reversed(range(num_layers)):
            w_cat, bias = _layer_weights(*flat[4 * layer : 4 * layer + 4])
            inp = x if layer == 0 else hn[layer - 1]
            z = torch.cat((inp, h0[layer]), dim=1)
            n_in = inp.shape[1]
            pre = torch.addmm(bias, z, w_cat.t())
            dh = dhn[layer] if d_out is None else dhn[layer] + d_out
            dpre, dc0[layer] = bwd(pre, c0[layer], dh, dcn[layer])
            dw_t = z.t() @ dpre  # [(F+H), 4H]: the fast layout for a long reduction
            grads[4 * layer] = dw_t[:n_in].t()
            grads[4 * layer + 1] = dw_t[n_in:].t()
            grads[4 * layer + 2] = db = dpre.sum(0)
            grads[4 * layer + 3] = db
            if layer > 0 or ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dz = dpre @ w_cat
                dh0[layer] = dz[:, n_in:]
                d_out = dz[:, :n_in]
        return (
            d_out if ctx.needs_input_grad[0] else None,
            torch.stack(dh0) if ctx.needs_input_grad[1] else None,
            torch.stack(dc0) if ctx.needs_input_grad[2] else None,
            *grads,
        )


def fused_lstm_sequence(x, h0, c0, flat_weights):
    """``FusedLSTMStep`` over ``x [T, M, F]`` (differentiable): ``(out [T, M, H], hn, cn)``."""
    outs = []
    for t in range(x.shape[0]):
        h0, c0 = FusedLSTMStep.apply(x[t], h0, c0, *flat_weights)
        outs.append(h0[-1])
    out = outs[0].unsqueeze(0) if len(outs) == 1 else torch.stack(outs)
    return out, h0, c0


def gemm_layers(flat_weights) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer ``[W_ih | W_hh]ᵀ`` (contiguous ``[(F + H), 4H]``) and ``b_ih + b_hh``: the
    layouts the C++ step and tape kernels take."""
    wts, biases = [], []
    for i in range(0, len(flat_weights), 4):
        w_cat, bias = _layer_weights(*flat_weights[i : i + 4])
        wts.append(w_cat.t().contiguous())
        biases.append(bias.contiguous())
    return wts, biases


class LSTMTape:
    """What a first-order truncation keeps for its backward: every step's inputs ``xs [T, M,
    F]`` and states ``hs, cs [T + 1, L, M, H]`` (``hs[t]`` before step ``t``) and the updates
    ``[T, M]``, in buffers allocated once. ``lstm_step_forward`` fills it step by step without a
    graph; ``TapedUpdates`` turns it into updates whose backward is one call of
    ``lstm_sequence_backward``: no autograd graph at all."""

    def __init__(self, steps: int, rows: int, features: int, layers: int, hidden: int, like):
        self.steps, self.t = steps, 0
        self.xs = like.new_empty(steps, rows, features)
        self.hs = like.new_empty(steps + 1, layers, rows, hidden)
        self.cs = like.new_empty(steps + 1, layers, rows, hidden)
        self.updates = like.new_empty(steps, rows)
        self.consumed = True  # no truncation in flight: the buffers may be refilled

    def reusable(self, steps: int, rows: int, features: int, layers: int, hidden: int, like):
        """True if this tape fits a new truncation of these sizes and its last one is done."""
        return (
            self.consumed
            and self.xs.shape == (steps, rows, features)
            and self.hs.shape == (steps + 1, layers, rows, hidden)
            and self.xs.device == like.device
            and self.xs.dtype == like.dtype
        )

    def step(self, x, h, c, wts, biases, head_w, head_b) -> tuple[torch.Tensor, ...]:
        """Records step ``t`` from inputs ``x [M, F]`` and states ``h, c [L, M, H]``; returns
        ``(updates [M], h, c)`` after the step (views into the tape)."""
        t = self.t
        if t >= self.steps:
            raise RuntimeError(f"the tape holds {self.steps} steps")
        if t == 0:
            self.consumed = False
            self.hs[0].copy_(h)
            self.cs[0].copy_(c)
        self.xs[t].copy_(x)
        native_kernels().lstm_step_forward(
            self.xs[t], self.hs[t], self.cs[t], self.hs[t + 1], self.cs[t + 1],
            wts, biases, head_w, float(head_b), self.updates[t], False,
        )  # fmt: skip
        self.t = t + 1
        return self.updates[t], self.hs[t + 1], self.cs[t + 1]


class TapedUpdates(torch.autograd.Function):
    """``updates [T, M]`` of a filled ``LSTMTape`` as a function of the LSTM's weights and its
    head (``flat_weights`` as ``lstm_weights``, then head weight and bias): the exact
    first-order meta-gradient, its backward being one fused backward-through-time pass."""

    @staticmethod
    def forward(ctx, tape: LSTMTape, scale: float, *params):
        if tape.t != tape.steps:
            raise RuntimeError(f"the tape holds {tape.t} of its {tape.steps} steps")
        ctx.tape, ctx.scale = tape, scale
        ctx.save_for_backward(*params)
        return tape.updates.clone()

    @staticmethod
    def backward(ctx, cot):
        *flat, head_w, _ = ctx.saved_tensors
        tape = ctx.tape
        wts, biases = gemm_layers([w.detach() for w in flat])
        out = native_kernels().lstm_sequence_backward(
            tape.xs, tape.hs, tape.cs, cot.contiguous(), wts, biases,
            head_w.detach().reshape(-1), ctx.scale,
        )  # fmt: skip
        tape.consumed = True
        grads = []
        for layer in range(len(flat) // 4):
            dwt, db = out[2 * layer], out[2 * layer + 1]
            n_in = dwt.shape[0] - flat[4 * layer + 1].shape[1]
            grads += [dwt[:n_in].t(), dwt[n_in:].t(), db, db]
        grads += [out[-2].view_as(head_w), out[-1]]
        return None, None, *grads


def lstm_weights(lstm: torch.nn.LSTM) -> list[torch.Tensor]:
    """``nn.LSTM``'s weights in the kernels' order: per layer ``w_ih, w_hh, b_ih, b_hh``."""
    if lstm.bidirectional or lstm.proj_size or not lstm.bias or lstm.batch_first:
        raise ValueError("FusedLSTM supports plain unidirectional LSTMs with biases only")
    out = []
    for layer in range(lstm.num_layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            out.append(getattr(lstm, f"{kind}_l{layer}"))
    return out


def fused_lstm(lstm: torch.nn.LSTM, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
    """``lstm(x, (h0, c0))`` through the fused kernels: ``(out, (hn, cn))``."""
    out, hn, cn = fused_lstm_sequence(x, h0, c0, lstm_weights(lstm))
    return out, (hn, cn)
