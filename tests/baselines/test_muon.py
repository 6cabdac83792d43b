"""``muon``: torch.optim.Muon (match_rms_adamw) on the matrices and torch.optim.AdamW on the rest,
one lr, in one optimizer; which tensors take Muon; bad input."""

from __future__ import annotations

import math

import pytest
import torch

import baselines
from baselines.muon import MuonAdamW


class Mixed(torch.nn.Module):
    """Every kind of tensor: an embedding and linear weights (2-D), a conv kernel (3-D), biases
    and a norm (1-D)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Embedding(10, 6)
        self.conv = torch.nn.Conv1d(6, 5, 3, padding=1)
        self.norm = torch.nn.LayerNorm(5)
        self.hidden = torch.nn.Linear(5, 7)
        self.head = torch.nn.Linear(7, 3)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        self.tokens = torch.randint(0, 10, (8, 4), generator=generator)
        self.labels = torch.randint(0, 3, (8,), generator=generator)

    def loss(self) -> torch.Tensor:
        h = self.conv(self.embed(self.tokens).transpose(1, 2)).mean(2)
        logits = self.head(torch.tanh(self.hidden(self.norm(h))))
        return torch.nn.functional.cross_entropy(logits, self.labels)


def _train(model: Mixed, optimizers: list[torch.optim.Optimizer], steps: int) -> None:
    for _ in range(steps):
        for opt in optimizers:
            opt.zero_grad()
        model.loss().backward()
        for opt in optimizers:
            opt.step()


def _by_hand(model: Mixed, lr: float, on_muon) -> list[torch.optim.Optimizer]:
    matrices = [p for p in model.parameters() if on_muon(p)]
    others = [p for p in model.parameters() if not on_muon(p)]
    return [
        torch.optim.Muon(matrices, lr=lr, adjust_lr_fn="match_rms_adamw"),
        torch.optim.AdamW(others, lr=lr),
    ]


def test_matches_torch_muon_and_adamw_split_by_hand():
    """The registry's ``muon`` at one lr IS torch's Muon on the 2-D tensors and torch's AdamW
    (its defaults) on the others, run side by side by hand: equal to the bit."""
    ours, theirs = Mixed(), Mixed()
    _train(ours, [baselines.create("muon", ours.parameters(), lr=0.02)], steps=6)
    _train(theirs, _by_hand(theirs, 0.02, lambda p: p.dim() == 2), steps=6)
    start = Mixed().parameters()
    for (name, a), b, a0 in zip(ours.named_parameters(), theirs.parameters(), start):
        assert torch.equal(a, b), name
        assert not torch.equal(a, a0), name


def test_use_muon_false_keeps_embedding_and_head_on_adamw():
    """Keller Jordan's and Moonlight's practice, by parameter group."""
    ours, theirs = Mixed(), Mixed()
    kept = [ours.embed.weight, ours.head.weight, ours.head.bias]
    rest = [p for p in ours.parameters() if not any(p is q for q in kept)]
    groups = [{"params": rest}, {"params": kept, "use_muon": False}]
    _train(ours, [baselines.create("muon", groups, lr=0.02)], steps=4)
    _train(theirs, _by_hand(theirs, 0.02, lambda p: p is theirs.hidden.weight), steps=4)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name


def test_state_holds_momentum_for_matrices_and_adam_moments_for_the_rest():
    model = Mixed()
    optimizer = MuonAdamW(model.parameters(), lr=0.01)
    _train(model, [optimizer], steps=1)
    assert set(optimizer.state[model.hidden.weight]) == {"momentum_buffer"}
    assert set(optimizer.state[model.conv.weight]) == {"step", "exp_avg", "exp_avg_sq"}
    assert set(optimizer.state[model.norm.weight]) == {"step", "exp_avg", "exp_avg_sq"}


def test_the_cosine_hook_scales_both_halves():
    """An lr changed in the group (the evaluation's cosine schedule does that) reaches Muon and
    AdamW alike: at lr 0 nothing moves."""
    model = Mixed()
    optimizer = MuonAdamW(model.parameters(), lr=0.02)
    _train(model, [optimizer], steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.param_groups[0]["lr"] = 0.0
    _train(model, [optimizer], steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_non_finite_gradient_makes_its_matrix_nan():
    weight = torch.nn.Parameter(torch.ones(3, 4))
    optimizer = MuonAdamW([weight], lr=0.01)
    weight.grad = torch.ones(3, 4)
    weight.grad[0, 0] = math.nan
    optimizer.step()
    assert torch.isnan(weight).all()


@pytest.mark.parametrize(
    ("hparams", "field"),
    [
        ({"momentum": 1.0}, "momentum"),
        ({"ns_steps": 0}, "ns_steps"),
        ({"ns_steps": 100}, "ns_steps"),
        ({"adjust_lr_fn": "rms"}, "adjust_lr_fn"),
        ({"adamw_betas": (0.9, 1.0)}, "adamw_betas"),
        ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
        ({"eps": 0.0}, "eps"),
        ({"use_muon": "yes"}, "use_muon"),
        ({"weight_decay": math.nan}, "weight_decay"),
    ],
)
def test_bad_hyperparameters_name_the_field(hparams, field):
    with pytest.raises(ValueError, match=field):
        MuonAdamW([torch.nn.Parameter(torch.ones(2, 2))], **hparams)


def test_use_muon_true_refuses_a_tensor_that_is_not_a_matrix():
    matrix, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"use_muon=True.*\[\(2,\)\]"):
        MuonAdamW([{"params": [matrix, bias], "use_muon": True}])
