"""Step-time overhead of every baseline optimizer, as a ratio to ``torch.optim.Adam(foreach=True)``.

A 1M-parameter MLP (784-1024-192-10, 1,002,570 parameters) on the CPU; each optimizer owns a copy of
the parameters and steps on the same cycle of four fixed gradient sets, whose signs alternate (so
GYRO's projection, active from step 1 here, triggers as on an oscillating problem) with noise.
Only ``optimizer.step()`` is timed. Optimizers are measured interleaved — every repeat times each of
them in turn, in a rotating order — so machine load hits all alike; the figure is the median over
repeats of the mean step time of a repeat. One JSON line per optimizer, then a summary line.

    python benchmarks/baselines_step_overhead.py [--repeats 21] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import baselines

REFERENCE = "adam_foreach"

# name -> (factory over params, target ratio or None, note)
CONFIGS: dict[str, tuple[Callable, float | None, str]] = {
    REFERENCE: (lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), 1.0, "reference"),
    "adam": (lambda p: baselines.create("adam", p, lr=1e-3), None, "torch default (CPU: for-loop)"),
    "sgd_momentum": (lambda p: baselines.create("sgd", p, lr=1e-2, momentum=0.9), None, ""),
    "gyro_adam": (
        lambda p: baselines.create("gyro_adam", p, lr=1e-3, warmup_steps=0),
        1.5,
        "projection active from step 1",
    ),
    "gyro_sgd": (
        lambda p: baselines.create("gyro_sgd", p, lr=1e-2, warmup_steps=0),
        1.5,
        "projection active from step 1",
    ),
    "lion": (lambda p: baselines.create("lion", p, lr=1e-4, weight_decay=0.1), 1.5, ""),
    "lion_sgd": (
        lambda p: baselines.create("lion_sgd", p, alpha=0.5, lr=1e-4, sgd_lr=1e-2, momentum=0.9),
        1.5,
        "SGD part with momentum",
    ),
    "adam_syre": (
        lambda p: baselines.create("adam_syre", p, lr=1e-3, weight_decay=0.1, backend="torch"),
        1.5,
        "torch (CPU) path",
    ),
    "hysterograd": (lambda p: baselines.create("hysterograd", p, lr=1e-3), 1.5, ""),
    "gap_adam_switch_k2": (
        lambda p: baselines.create(
            "gap_adam", p, type="switch", betas=[(0.5, 0.999), (0.99, 0.999)], J_ema=0.9
        ),
        2.5,
        "shared beta2: one second moment",
    ),
    "gap_adam_param_wise_k2": (
        lambda p: baselines.create(
            "gap_adam", p, type="switch_parameter_wise", betas=[(0.5, 0.999), (0.99, 0.999)]
        ),
        2.5,
        "shared beta2: one second moment",
    ),
    "gap_adam_param_wise_k2_two_beta2": (
        lambda p: baselines.create(
            "gap_adam", p, type="switch_parameter_wise", betas=[(0.9, 0.99), (0.99, 0.999)]
        ),
        2.5,
        "distinct beta2: two second moments",
    ),
    "gap_sgdm_switch_k2": (
        lambda p: baselines.create("gap_sgdm", p, lr=1e-2, type="switch", momentum=[0.5, 0.9]),
        2.5,
        "",
    ),
}


def make_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(784, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 192),
        torch.nn.ReLU(),
        torch.nn.Linear(192, 10),
    )


def gradient_cycle(params: list[torch.Tensor], length: int = 4) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    base = [torch.randn(p.shape, generator=generator) for p in params]
    return [
        [(-1) ** k * b + 0.5 * torch.randn(b.shape, generator=generator) for b in base]
        for k in range(length)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = make_mlp()
    numel = sum(p.numel() for p in model.parameters())
    cycle = gradient_cycle(list(model.parameters()))
    runs = {}
    for name, (factory, _, _) in CONFIGS.items():
        params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        runs[name] = {"params": params, "optimizer": factory(params), "step": 0, "times": []}

    def advance(run: dict, count: int) -> float:
        start_total = 0.0
        for _ in range(count):
            for param, grad in zip(run["params"], cycle[run["step"] % len(cycle)]):
                param.grad = grad
            start = time.perf_counter()
            run["optimizer"].step()
            start_total += time.perf_counter() - start
            run["step"] += 1
        return start_total / count

    for run in runs.values():
        advance(run, args.warmup)
    names = list(runs)
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name]["times"].append(advance(runs[name], args.steps))

    reference = statistics.median(runs[REFERENCE]["times"])
    worst = {}
    for name, run in runs.items():
        median = statistics.median(run["times"])
        ratio = median / reference
        target = CONFIGS[name][1]
        record = {
            "optimizer": name,
            "median_step_ms": round(median * 1e3, 4),
            "ratio_to_adam_foreach": round(ratio, 3),
            "target": target,
            "meets_target": None if target is None else ratio <= target,
            "note": CONFIGS[name][2],
        }
        if name == "hysterograd":
            record["last_status"] = run["optimizer"].telemetry.status
        if target is not None:
            worst[name] = ratio <= target
        print(json.dumps(record))
    print(
        json.dumps(
            {
                "summary": "baselines_step_overhead",
                "parameters": numel,
                "threads": args.threads,
                "repeats": args.repeats,
                "steps_per_repeat": args.steps,
                "all_targets_met": all(worst.values()),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
