"""The adaptive step's per-tensor log factors along a run (``general`` with ``adaptive_step``).

A learned controller of the step size is judged by what it does over a whole run, longer than
meta-training's: this traces each tensor's log factor ``s`` (``l2o.optimizers.general``, module
docstring) and the training loss every ``every`` steps, through the one evaluation path
(``l2o.training.train_optimizee``), and prints one JSON line per (seed, step).

    python -m analysis.step_factors RUN/best.pt --task fashion_mnist_mlp_relu \
        --dataset fashion_mnist --steps 1000 --seeds 1000 1001 \
        --variation batch_size=256 replacement=true width=128
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch
import yaml

from l2o.optimizers import LearnedOptimizer, load_learned_optimizer
from l2o.optimizers.base import LearnedOptimizerNet
from l2o.tasks import Task, TaskVariation, get_task
from l2o.training import train_optimizee


def trace_step_factors(
    net: LearnedOptimizerNet, task: Task, steps: int, seed: int, every: int = 100
) -> list[dict]:
    """``{"seed", "step", "loss", "log_factors"}`` after every ``every``-th step and the last;
    ``log_factors`` in the order of the model's parameters."""
    if not getattr(net, "adaptive_step", False):
        raise ValueError("trace_step_factors needs a 'general' optimizer with adaptive_step=True")
    if steps <= 0 or every <= 0:
        raise ValueError(f"steps and every must be positive, got {steps} and {every}")
    rows: list[dict] = []

    def record(step, model, optimizer, loss, x, y):
        if (step + 1) % every and step + 1 != steps:
            return
        factors = [
            float(optimizer.state[p]["log_step"].reshape(-1)[0])
            for p in model.parameters()
            if "log_step" in optimizer.state[p]
        ]
        rows.append({"seed": seed, "step": step + 1, "loss": float(loss), "log_factors": factors})

    def make_optimizer(params):
        return LearnedOptimizer(params, net, total_steps=steps)

    train_optimizee(task, make_optimizer, steps, seed=seed, callback=record, evaluate_test=False)
    return rows


def _variation(pairs: Sequence[str]) -> TaskVariation:
    raw = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--variation takes key=value pairs, got {pair!r}")
        raw[key] = yaml.safe_load(value)
    return TaskVariation.from_mapping(raw)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a learned-optimizer checkpoint (*.pt)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--variation", nargs="*", default=[], help="key=value (TaskVariation)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000])
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = load_learned_optimizer(args.checkpoint)[0]
    task = get_task(args.task, dataset=args.dataset, variation=_variation(args.variation))
    rows = []
    for seed in args.seeds:
        for row in trace_step_factors(net, task, args.steps, seed, args.every):
            print(json.dumps(row))
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
