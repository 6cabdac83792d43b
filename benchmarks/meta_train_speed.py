"""Meta-training speed: inner optimizee steps per second of meta-training (meta-gradient and
meta-optimizer step included) on the paper's classic configuration, against a straightforward
reference loop run in the same process.

    python benchmarks/meta_train_speed.py                     # classic: B=1, K=20, LSTM, CPU
    python benchmarks/meta_train_speed.py --B 8
    python benchmarks/meta_train_speed.py --K 200 --checkpoint-every 20 --no-reference

Classic configuration: MNIST 784-20-10 sigmoid MLP (``mnist_mlp_sigmoid`` on ``mnist5k``), batch
128, LSTM 2×20 with log/sign preprocessing, unroll 20, first-order, meta-batch 1, CPU, 2 threads.

The reference is ``meta_train.reference.reference_meta_step`` on the same learned optimizer
(per-optimizee autograd, the whole graph kept, one backward per truncation). Ours and the
reference run alternately, ``--repeats`` rounds of ``--meta-steps`` meta-steps each, so both see
the same machine load; the figures are medians over rounds and ``ratio`` is the median of the
per-round ratios. ``peak_rss_mb`` is the process's peak after our loop (before the reference runs);
``reference_peak_rss_mb`` the peak after both.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2o.optimizers import create
from l2o.tasks import get_task
from meta_train.estimators import meta_step_gradient
from meta_train.reference import reference_meta_step
from meta_train.unroll import UnrollConfig, init_inner_state


def limit_malloc_caching(threshold_bytes: int) -> bool:
    """glibc: serve allocations above ``threshold_bytes`` by mmap, so freed tensors return to the
    OS at once (by default the threshold grows with the largest freed block and the heap keeps
    freed tensors, which inflates the peak RSS without any live data behind it)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold_bytes)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class OurLoop:
    """Meta-steps of the configured estimator (``meta_step_gradient``), clip 1, Adam."""

    def __init__(self, task, data, args) -> None:
        torch.manual_seed(0)
        kwargs = {"output_scale": args.output_scale} if args.arch == "lstm" else {}
        self.lopt = create(args.arch, **kwargs).to(args.device)
        self.meta_opt = torch.optim.Adam(self.lopt.parameters(), lr=1e-3)
        self.cfg = UnrollConfig(
            length=args.K,
            meta_loss="mean",
            estimator=args.order,
            checkpoint_every=args.checkpoint_every,
            chunk_size=args.chunk_size,
        )
        self.task = task
        seeds = list(range(args.B))
        self.inner = init_inner_state(task, self.lopt, seeds, args.device)
        self.samplers = [data.sampler(task.batch_size, seed=s) for s in seeds]

    def meta_step(self) -> float:
        self.meta_opt.zero_grad(set_to_none=True)
        result, self.inner = meta_step_gradient(
            self.lopt, self.task, self.inner, self.samplers, self.cfg
        )
        nn.utils.clip_grad_norm_(self.lopt.parameters(), 1.0)
        self.meta_opt.step()
        return result.meta_loss


class ReferenceLoop(OurLoop):
    """The same meta-steps through ``meta_train.reference.reference_meta_step``, the plain
    specification (per-optimizee autograd, whole graph, one backward)."""

    def meta_step(self) -> float:
        value, self.inner = reference_meta_step(
            self.lopt, self.meta_opt, self.task, self.inner, self.samplers, self.cfg
        )
        return value


def timed(loop, meta_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(meta_steps):
        loop.meta_step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--B", type=int, default=1, help="optimizees per meta-step")
    parser.add_argument("--K", type=int, default=20, help="unroll length")
    parser.add_argument("--arch", default="lstm", choices=["lstm", "mlp"])
    parser.add_argument("--order", default="first", choices=["first", "second"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-scale", type=float, default=0.1)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=0)
    parser.add_argument("--meta-steps", type=int, default=3, help="meta-steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-steps first")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=0,
        help="glibc mmap threshold in bytes (0, the default: leave the allocator alone; a "
        "small threshold lowers the peak RSS a little but costs page faults on every "
        "allocation, ~2.8x slower)",
    )
    args = parser.parse_args(argv)
    mmap_set = limit_malloc_caching(args.mmap_threshold) if args.mmap_threshold > 0 else False

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    task = get_task("mnist_mlp_sigmoid", dataset=args.dataset)
    data = task.load_data(args.device)
    steps_per_round = args.meta_steps * args.K * args.B

    ours = OurLoop(task, data, args)
    for _ in range(args.warmup):
        ours.meta_step()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    our_times = []
    for _ in range(args.repeats if args.no_reference else 1):
        sync()
        our_times.append(timed(ours, args.meta_steps))
        sync()
    our_peak = peak_rss_mb()

    result = {
        "benchmark": "meta_train_speed",
        "arch": args.arch,
        "B": args.B,
        "K": args.K,
        "order": args.order,
        "checkpoint_every": args.checkpoint_every,
        "device": args.device,
        "threads": args.threads,
        "mmap_threshold": args.mmap_threshold if mmap_set else None,
    }
    if not args.no_reference:
        ref = ReferenceLoop(task, data, args)
        for _ in range(args.warmup):
            ref.meta_step()
        ref_times, ratios = [], []
        for r in range(args.repeats):
            t_ref = timed(ref, args.meta_steps)
            t_our = timed(ours, args.meta_steps) if r > 0 else our_times[0]
            if r > 0:
                our_times.append(t_our)
            ref_times.append(t_ref)
            ratios.append(t_ref / t_our)
        result["reference_steps_per_s"] = round(steps_per_round / statistics.median(ref_times), 2)
        result["ratio"] = round(statistics.median(ratios), 3)
        result["ratio_min_max"] = [round(min(ratios), 3), round(max(ratios), 3)]
        result["reference_peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["inner_steps_per_s"] = round(steps_per_round / statistics.median(our_times), 2)
    result["peak_rss_mb"] = round(our_peak, 1)
    result["torch"] = torch.__version__
    result["machine"] = platform.processor() or platform.machine()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
