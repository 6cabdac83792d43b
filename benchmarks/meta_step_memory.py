"""Peak RSS growth of one meta-step vs. ``meta_train.training.memory.meta_step_bytes``'s estimate.

Runs ONE meta-step (CPU) of a config's task and optimizer with the given meta-batch, length and
estimator, and prints JSON: the estimate, the measured growth of peak RSS over the RSS before
the step, and their ratio. Run each case in a fresh process (peak RSS only grows):

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/meta_step_memory.py \
        --config default schedule.meta_batch=4 unroll.length=20
"""

from __future__ import annotations

import argparse
import json
import resource

import torch

import l2o.optimizers as lo
from meta_train.configuration.schema import load_config
from meta_train.estimators import meta_step_gradient
from meta_train.inner_loop.unroll import init_inner_state
from meta_train.training.memory import meta_step_bytes
from meta_train.training.parts import make_task


class Slices:
    """Consecutive minibatches of the training set (enough for one meta-step)."""

    def __init__(self, x, y, size, start):
        self.x, self.y, self.size, self.i = x, y, size, start

    def next(self):
        start = self.i % (len(self.x) - self.size)
        self.i += self.size
        return self.x[start : start + self.size], self.y[start : start + self.size]


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(0)
    task = make_task(cfg)
    data = task.load_data("cpu", root=cfg.data.root)
    x, y = data.split("train")
    lopt = lo.create(cfg.optimizer.name, **cfg.optimizer.kwargs)
    b, k = cfg.schedule.meta_batch, cfg.unroll.length
    estimate = meta_step_bytes(
        cfg.unroll, b, task, lopt, x[: task.batch_size], y[: task.batch_size]
    )
    inner = init_inner_state(task, lopt, list(range(b)), "cpu")
    samplers = [Slices(x, y, task.batch_size, 97 * i) for i in range(b)]
    before = current_rss_bytes()
    assert rss_peak_bytes() <= before + 64 * 2**20, "peak RSS already above the current RSS"
    meta_step_gradient(lopt, task, inner, samplers, cfg.unroll)
    growth = rss_peak_bytes() - before
    print(
        json.dumps(
            {
                "config": args.config,
                "overrides": args.overrides,
                "estimator": cfg.unroll.estimator,
                "meta_batch": b,
                "length": k,
                "estimate_mib": round(estimate / 2**20, 1),
                "measured_peak_growth_mib": round(growth / 2**20, 1),
                "estimate_over_measured": round(estimate / max(growth, 1), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
