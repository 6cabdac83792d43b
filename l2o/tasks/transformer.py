"""A small decoder-only transformer language model over bytes, usable under ``torch.func``.

Pre-LayerNorm blocks (``x + attn(ln(x))``, ``x + mlp(ln(x))``), learned positional embeddings,
causal multi-head self-attention written out (the causal mask is made in ``forward``, never a
buffer, so ``functional_call``/``vmap`` over many optimizees see no state to mutate), GELU MLP
of four times the width, a final LayerNorm and an untied output layer. Input: tokens ``[B, T]``
(int64, ``T`` at most the context); output: next-token logits ``[B, T, vocab]``.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from l2o.symmetry import SymmetryStructure


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of the {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b t (n h d) -> n b h t d", n=3, h=self.heads)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        t = x.shape[-2]
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(-1)
        return self.out(rearrange(weights @ v, "b h t d -> b t (h d)"))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp_in = nn.Linear(width, 4 * width)
        self.act = nn.GELU()
        self.mlp_out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp_out(self.act(self.mlp_in(self.ln2(x))))


class TransformerLM(nn.Module):
    """``vocab`` tokens, ``context`` positions, ``depth`` blocks of ``width`` with ``heads``."""

    def __init__(
        self, vocab: int = 256, context: int = 64, width: int = 64, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, width)
        self.pos_embed = nn.Parameter(torch.zeros(context, width))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_out = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[-1]
        if t > self.context:
            raise ValueError(f"{t} tokens exceed the model's context of {self.context}")
        x = self.embed(tokens) + self.pos_embed[:t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_out(x))

    def symmetry_structures(self) -> list:
        """What ``l2o.symmetry`` cannot trace (the causal mask is data-dependent control flow for
        ``torch.fx``), given by hand: the softmax's translation symmetry on the output head.
        The MLPs' GELU is not positively homogeneous (no rescale symmetry), and no single weight
        feeds a LayerNorm alone in a pre-LN block (the residual stream is a sum: no scale one)."""
        return [SymmetryStructure.translation("head.weight", "head.bias")]
