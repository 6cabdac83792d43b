"""Data-parallel meta-training speed: ``torchrun --nproc_per_node=N`` with T threads each against
one process with N×T threads, on the same total meta-batch, and the all-reduce's share of a
meta-step.

    python benchmarks/distributed_speed.py                  # classic config, B=2 in all, 2 ranks
    python benchmarks/distributed_speed.py --B 8 --meta-steps 10 --repeats 3

Classic configuration (as ``benchmarks/meta_train_speed.py``): MNIST 784-20-10 sigmoid MLP on
``mnist5k``, batch 128, LSTM 2×20, unroll 20, first order, CPU. Each meta-step is what the trainer
does: the estimator, :func:`meta_train.training.distributed.reduce_meta_step` (one all-reduce of the
meta-gradient, the skip votes and the logged numbers), clipping and Adam.

The two set-ups run alternately, ``--repeats`` rounds of ``--warmup`` + ``--meta-steps``
meta-steps each (each round a fresh launch), so both see the same machine load; figures are
medians over rounds, ``ratio`` the median of per-round ratios (distributed / single), and
``load_1min`` the load average before each round. Prints one JSON line.

Run with ``--worker`` by the script itself (once per process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args: argparse.Namespace) -> None:
    """One process: time the meta-steps of its slice; rank 0 prints a JSON line."""
    import torch
    from torch import nn

    from l2o.optimizers import create
    from l2o.tasks import get_task
    from meta_train.estimators import meta_step_gradient
    from meta_train.inner_loop.unroll import UnrollConfig, init_inner_state
    from meta_train.training import distributed as dist

    torch.set_num_threads(args.threads)
    dist.init("cpu")
    lo, hi = dist.slice_bounds(args.B, dist.world_size(), dist.rank())
    torch.manual_seed(0)
    task = get_task("mnist_mlp_sigmoid", dataset=args.dataset)
    data = task.load_data("cpu")
    lopt = create("lstm", output_scale=0.1)
    meta_opt = torch.optim.Adam(lopt.parameters(), lr=1e-3)
    cfg = UnrollConfig(length=args.K, meta_loss="mean", estimator="first", chunk_size=0)
    seeds = list(range(lo, hi))
    inner = init_inner_state(task, lopt, seeds, "cpu")
    samplers = [data.sampler(task.batch_size, seed=s) for s in seeds]
    params = [p for p in lopt.parameters() if p.requires_grad]
    total = reduce_time = 0.0
    for step in range(args.warmup + args.meta_steps):
        dist.barrier()  # every rank starts the meta-step together
        tic = time.perf_counter()
        meta_opt.zero_grad(set_to_none=True)
        result, inner = meta_step_gradient(lopt, task, inner, samplers, cfg)
        mid = time.perf_counter()
        dist.reduce_meta_step(params, [0.0], [result.meta_loss])
        after = time.perf_counter()
        nn.utils.clip_grad_norm_(params, 1.0)
        meta_opt.step()
        if step >= args.warmup:
            total += time.perf_counter() - tic
            reduce_time += after - mid
    dist.check_in_sync(params, "at the end of the benchmark")
    if dist.is_main():
        out = {
            "inner_steps_per_s": args.K * args.B * args.meta_steps / total,
            "meta_step_s": total / args.meta_steps,
            "allreduce_share": reduce_time / total,
        }
        print("RESULT " + json.dumps(out), flush=True)
    dist.shutdown()


def _load() -> float:
    return os.getloadavg()[0]


def _launch(args: argparse.Namespace, ranks: int, threads: int) -> dict:
    common = [
        "--worker",
        f"--B={args.B}",
        f"--K={args.K}",
        f"--threads={threads}",
        f"--meta-steps={args.meta_steps}",
        f"--warmup={args.warmup}",
        f"--dataset={args.dataset}",
    ]
    if ranks == 1:
        cmd = [sys.executable, __file__, *common]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*launcher, f"--nproc_per_node={ranks}", __file__, *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--B", type=int, default=2, help="total optimizees per meta-step")
    parser.add_argument("--K", type=int, default=20, help="unroll length")
    parser.add_argument("--ranks", type=int, default=2, help="processes of the distributed run")
    parser.add_argument("--threads", type=int, default=1, help="threads per distributed rank")
    parser.add_argument("--meta-steps", type=int, default=5, help="timed meta-steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-steps first")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    rounds = []
    for _ in range(args.repeats):
        load_d = _load()
        d = _launch(args, args.ranks, args.threads)
        load_s = _load()
        s = _launch(args, 1, args.ranks * args.threads)
        rounds.append({"distributed": d, "single": s, "load_1min": [load_d, load_s]})

    def med(kind: str, key: str) -> float:
        return statistics.median(r[kind][key] for r in rounds)

    out = {
        "benchmark": "distributed_speed",
        "config": {
            "B_total": args.B,
            "K": args.K,
            "ranks": args.ranks,
            "threads_per_rank": args.threads,
            "single_threads": args.ranks * args.threads,
            "meta_steps": args.meta_steps,
            "repeats": args.repeats,
        },
        "distributed_inner_steps_per_s": med("distributed", "inner_steps_per_s"),
        "single_inner_steps_per_s": med("single", "inner_steps_per_s"),
        "ratio": statistics.median(
            r["distributed"]["inner_steps_per_s"] / r["single"]["inner_steps_per_s"] for r in rounds
        ),
        "allreduce_share_of_meta_step": med("distributed", "allreduce_share"),
        "distributed_meta_step_s": med("distributed", "meta_step_s"),
        "load_1min": [r["load_1min"] for r in rounds],
        "rounds": rounds,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
