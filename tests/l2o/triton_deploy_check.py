"""The fused Triton deployment kernels against the PyTorch path, on CPU tensors under
``TRITON_INTERPRET=1`` (run in a subprocess by ``test_triton_kernels.py``, since the variable must
be set before triton is imported).

    TRITON_INTERPRET=1 L2O_NATIVE=0 python tests/l2o/triton_deploy_check.py shipped|variants

Prints one JSON line: per run, the max |Δ| between the two paths' parameters after every step,
whether their NaN coordinates are the same, how far the parameters moved, and how many steps the
kernels ran.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from l2o.optimizers import LearnedOptimizer, create, load_learned_optimizer
from l2o.optimizers import triton_kernels as kernels
from l2o.optimizers.wrapper import pretrained_path

SHAPES = ((13, 11), (150,), (7,))  # 300 coordinates in three tensors
STEPS = 3
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# small blocks and few programs: the kernels' loops, masked tails and partial rows all run
kernels.STATS_BLOCK, kernels.NETWORK_BLOCK, kernels.MAX_PROGRAMS = 64, 32, 2

_kernel_steps = [0]
_apply = kernels.apply_updates_


def _counted(*args):
    _kernel_steps[0] += 1
    return _apply(*args)


kernels.apply_updates_ = _counted


def run(net, backend, dtype, bad_inputs, **options):
    """Parameters ``[1 + STEPS, N]`` (float64) at the start and after each of ``STEPS`` steps
    on fixed gradients; with ``bad_inputs`` step 2's gradients hold NaN, +inf and -inf and one
    parameter is NaN."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]
    opt = LearnedOptimizer(params, net, backend=backend, **options)
    after = [torch.cat([p.detach().double().reshape(-1) for p in params])]
    for k in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        if bad_inputs and k == 1:
            params[0].grad[0, 0], params[0].grad[1, 1] = float("nan"), float("inf")
            params[1].grad[3] = -float("inf")
            with torch.no_grad():
                params[2][4] = float("nan")
        opt.step()
        after.append(torch.cat([p.detach().double().reshape(-1) for p in params]))
    return torch.stack(after)


def compare(name, net, dtype="float32", bad_inputs=False, **options):
    before = _kernel_steps[0]
    fused = run(net, "triton", DTYPES[dtype], bad_inputs, **options)
    steps = _kernel_steps[0] - before
    reference = run(net, "torch", DTYPES[dtype], bad_inputs, **options)
    same_nan = torch.equal(fused.isnan(), reference.isnan())
    diff = (fused - reference).nan_to_num(0.0, 0.0, 0.0).abs().max().item()
    return {
        "name": name,
        "dtype": dtype,
        "bad_inputs": bad_inputs,
        "max_abs_diff": diff,
        "same_nan": same_nan,
        "nan_count": int(reference[-1].isnan().sum()),
        "max_abs_param": reference.nan_to_num(0.0, 0.0, 0.0).abs().max().item(),
        "moved": (reference[-1] - reference[0]).nan_to_num(0.0, 0.0, 0.0).abs().max().item(),
        "kernel_steps": steps,
    }


def randomized(net, seed):
    """``net`` with random network, schedule and gain weights (an untrained ``general`` has a
    zero residual gain and a zero schedule: half its step would go untested)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("net.", "schedule.", "residual_gain")):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return net


def shipped():
    out = []
    for name in ("mlp-mnist", "general-v2"):  # the shipped general's orthogonal term: uncovered
        net = load_learned_optimizer(pretrained_path(name))[0]
        for dtype in DTYPES:
            out.append(compare(name, net, dtype))
        out.append(compare(name, net, "float32", bad_inputs=True))
        out.append(compare(name, net, "bfloat16", bad_inputs=True))
    return out


GENERAL_VARIANTS = {
    "adam": dict(nominal="adam", normalize_output=False, nominal_lr=0.05),
    "sgdm_normalized_no_schedule": dict(
        nominal="sgdm", learned_schedule=False, progress=False, sgdm_beta=0.99
    ),
    "mix_two_layers": dict(nominal="mix", normalize_output=False, hidden_sizes=(8, 12)),
    "none_cosine_boost": dict(
        nominal="none", base_schedule="cosine", early_boost=2.0, horizon_power=0.5
    ),
    "lars_two_layers": dict(nominal="lars", normalize_output=False, hidden_sizes=(20, 16)),
    "mix_normalized": dict(nominal="mix", total_steps=30),
}


def variants():
    out = []
    for seed, (name, kwargs) in enumerate(GENERAL_VARIANTS.items()):
        net = randomized(create("general", **kwargs), seed)
        out.append(compare(f"general/{name}", net, bad_inputs=seed % 2 == 1, total_steps=40))
    mlp = randomized(create("mlp"), 10)
    out.append(compare("mlp/default", mlp, bad_inputs=True, lr=0.5, weight_decay=0.1))
    small = create("mlp", hidden_sizes=(5,), momentum_decays=(0.9, 0.99), per_tensor_norm=False)
    out.append(compare("mlp/global_norm", randomized(small, 11)))
    return out


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (set before triton is imported)")
    print(json.dumps({"shipped": shipped, "variants": variants}[sys.argv[1]]()))
