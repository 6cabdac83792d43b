"""Deployment speed: one full training step (zero_grad, forward, backward, optimizer step) of a
1.86M-parameter MLP (784-1024-1024-10, ReLU, batch 128) with ``LearnedOptimizer`` (the shipped
``lstm-mnist``, ``mlp-mnist`` and ``general``) against ``torch.optim.Adam(foreach=True)``, on the
CPU with 2 threads. ``--archs`` also takes checkpoint paths (``*.pt``) and ``muon``
(``baselines.MuonAdamW``: torch's Muon on the matrices, AdamW on the rest), the handcrafted
optimizer whose Newton–Schulz iterations the ``orthogonal`` nominal term shares.

    python benchmarks/deploy_speed.py
    python benchmarks/deploy_speed.py --chunk-size 16384 --repeats 9
    python benchmarks/deploy_speed.py --archs general,muon,general-v2

The optimizers run alternately, one timed step each per round, so they see the same machine
load; per optimizer the median step time over rounds, and ``*_ratio`` is the median over rounds
of (its step time / Adam's step time in the same round). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2o.optimizers import LearnedOptimizer, create, native
from l2o.optimizers.wrapper import available_pretrained


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )


def make_net(arch: str):
    """The shipped checkpoint if there is one (its config is what users deploy), a checkpoint
    file (``*.pt``), else fresh."""
    if arch.endswith(".pt"):
        from l2o.optimizers import load_learned_optimizer

        return load_learned_optimizer(arch)[0], arch
    shipped = available_pretrained()
    name = next((n for n in (arch, f"{arch}-mnist") if n in shipped), None)
    if name is not None:
        from l2o.optimizers import load_learned_optimizer
        from l2o.optimizers.wrapper import pretrained_path

        return load_learned_optimizer(pretrained_path(name))[0], name
    return create(arch), f"{arch} (untrained)"


class Trainer:
    def __init__(self, make_optimizer, x, y) -> None:
        self.model = make_model()
        self.opt = make_optimizer(self.model.parameters())
        self.x, self.y = x, y

    def step(self) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="default: each network's deploy_chunk_size"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--archs", default="lstm,mlp,general")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    trainers = {"adam": Trainer(lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), x, y)}
    names = {}
    for arch in args.archs.split(","):
        if arch == "muon":
            import baselines

            trainers[arch] = Trainer(lambda p: baselines.MuonAdamW(p, lr=1e-3), x, y)
            names[arch] = "baselines.MuonAdamW"
            continue
        net, names[arch] = make_net(arch)
        trainers[arch] = Trainer(
            lambda p, net=net: LearnedOptimizer(p, net, chunk_size=args.chunk_size), x, y
        )
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.step()
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            times[name].append(trainer.step())
    result = {
        "benchmark": "deploy_speed",
        "params": sum(p.numel() for p in trainers["adam"].model.parameters()),
        "threads": args.threads,
        "chunk_size": args.chunk_size,
        "adam_step_ms": round(1e3 * statistics.median(times["adam"]), 2),
        # which build ran: the C++ kernels and their flags, or PyTorch ops (L2O_NATIVE=0)
        "native_flags": native.compile_flags() if native.native_kernels() else None,
    }
    for arch in names:
        ratios = [t / a for t, a in zip(times[arch], times["adam"])]
        result[f"{arch}_step_ms"] = round(1e3 * statistics.median(times[arch]), 2)
        result[f"{arch}_ratio"] = round(statistics.median(ratios), 2)
        result[f"{arch}_net"] = names[arch]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
