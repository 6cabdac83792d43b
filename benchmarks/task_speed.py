"""Wall time of training a task with Adam through the one evaluation path (``train_optimizee``):
what a case of that task costs a suite, per run.

    python benchmarks/task_speed.py                          # the tasks of issue 24, 200 steps
    python benchmarks/task_speed.py --tasks mnist_mlp_sigmoid:mnist5k --steps 1000

Each task: its data loaded, 5 untimed warm-up steps (seed 1), then one timed run of ``--steps``
steps (seed 0, no test evaluation) and, separately, the time of one test evaluation. One thread
by default (``--threads``). Prints one JSON line per task.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from l2o.tasks import get_task
from l2o.training import evaluate, make_optimizee, train_optimizee

# task[:dataset] and the Adam learning rate it is timed with
DEFAULT_TASKS = {
    "digits_mlp_relu": 1e-2,
    "digits_mlp_tanh": 1e-2,
    "mnist_mlp_wide:mnist5k": 1e-3,
    "stdlib_lm_transformer": 3e-3,
    "fashion_mnist_conv": 1e-2,
}


def time_task(spec: str, lr: float, steps: int) -> dict:
    name, _, dataset = spec.partition(":")
    task = get_task(name, dataset=dataset or None)
    data = task.load_data()
    adam = lambda params: torch.optim.Adam(params, lr=lr)
    train_optimizee(task, adam, 5, seed=1, data=data, evaluate_test=False)
    start = time.perf_counter()
    result = train_optimizee(task, adam, steps, seed=0, data=data, evaluate_test=False)
    train_s = time.perf_counter() - start
    model = make_optimizee(task, 0)
    start = time.perf_counter()
    evaluate(model, task, data)
    return {
        "task": task.name,
        "dataset": task.dataset_name,
        "batch_size": task.batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "adam_lr": lr,
        "steps": steps,
        "train_s": round(train_s, 3),
        "test_eval_s": round(time.perf_counter() - start, 3),
        "first_loss": round(float(result.train_losses[0]), 4),
        "last10_loss": round(float(result.train_losses[-10:].mean()), 4),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", help="task[:dataset] (default: issue 24's)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's lr for --tasks")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = dict.fromkeys(args.tasks, args.lr) if args.tasks else DEFAULT_TASKS
    for spec, lr in tasks.items():
        print(json.dumps(time_task(spec, lr, args.steps)), flush=True)


if __name__ == "__main__":
    main()
