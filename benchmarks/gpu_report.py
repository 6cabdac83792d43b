"""Every GPU figure of the project in one command (a few minutes on one GPU, 8 at most), as
JSON lines on stdout:

    python benchmarks/gpu_report.py                        # on a machine with a CUDA GPU
    python benchmarks/gpu_report.py --device cpu --tiny    # every measurement on the CPU, tiny
    python benchmarks/gpu_report.py --figures deploy       # a subset: deploy,meta_train,torchrun

Lines (``"figure"`` names each):

* ``device``: the GPU, torch and triton;
* ``deploy_step``: one optimizer step (gradients given) at 10 M and 100 M parameters (four square
  matrices and their biases) of ``torch.optim.AdamW(fused=True)`` and of the shipped ``general``,
  ``general-v2`` and ``mlp-mnist`` through the fused Triton kernels (``backend="triton"``, where
  they cover the network: not ``general``'s orthogonal nominal term) and through the PyTorch path
  (``backend="torch"``): the median of CUDA-event-timed steps after warm-up, and
  its ratio to AdamW's;
* ``meta_train``: PES and first-order meta-training inner steps per second at meta-batch 64, by
  the CPU benchmark's code (``benchmarks/meta_train_speed.py --estimator pes``: PES then
  first-order truncated BPTT of the same optimizer), for the LSTM and the MLP optimizer;
* ``torchrun_smoke``: ``meta_train/run.py --config tiny`` (no meta-test) as a 1-GPU torchrun job,
  whose process group is nccl on CUDA: exit status, wall time, meta-steps logged;
* ``goal``: ``general``'s step over AdamW's at 100 M parameters (issue 28 asks ≤ 3), by its
  fastest backend (named in the line);
* ``done``: the total wall time and the figures that failed.

Without a GPU it exits with status 2 and one line on stderr. ``--device cpu --tiny`` (or
``--dry-run``) runs every measurement with tiny sizes on the CPU, the Triton kernels under
``TRITON_INTERPRET=1``, in well under a minute: its numbers mean nothing, it keeps this script
working until a GPU is at hand. A figure that fails prints a line with its ``error`` and the
others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("deploy", "meta_train", "torchrun")
NO_GPU = (
    "gpu_report: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU "
    "machine, or with --device cpu --tiny to exercise every measurement on the CPU"
)


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does."""

    deploy_params: tuple[int, ...]  # parameter counts of the deployment figures
    warmup: int  # untimed steps first (deployment steps, meta-steps)
    steps: int  # timed deployment steps (median)
    meta_batch: int
    unroll: int  # inner steps per truncation
    meta_steps: int  # per timed round of meta_train_speed
    repeats: int  # timed rounds of meta_train_speed


FULL = Sizes((10_000_000, 100_000_000), 5, 30, 64, 20, 2, 3)
TINY = Sizes((600,), 0, 1, 2, 2, 1, 1)


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def square_layers(params: int) -> list[tuple[int, ...]]:
    """Four ``s × s`` matrices and their ``s`` biases, ``4s² + 4s`` close to ``params``."""
    side = max(1, int((-1 + math.sqrt(1 + params)) / 2))
    return [(side, side)] * 4 + [(side,)] * 4


class StepTimer:
    """Times calls: CUDA events on the GPU (read after one synchronization at the end), the
    wall clock on the CPU."""

    def __init__(self, device) -> None:
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        self.marks: list = []

    def __call__(self, fn) -> None:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.marks.append((start, end))
        else:
            tic = time.perf_counter()
            fn()
            self.marks.append(1e3 * (time.perf_counter() - tic))

    def median_ms(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize()
            return statistics.median(s.elapsed_time(e) for s, e in self.marks)
        return statistics.median(self.marks)


def deploy_step_ms(make_optimizer, shapes, device, sizes: Sizes) -> float:
    """The median time of one ``step()`` of ``make_optimizer(params)`` on fixed gradients."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    params = [
        torch.nn.Parameter(0.05 * torch.randn(s, generator=gen, device=device)) for s in shapes
    ]
    for p in params:
        p.grad = 0.01 * torch.randn(p.shape, generator=gen, device=device)
    opt = make_optimizer(params)
    for _ in range(sizes.warmup):
        opt.step()
    timer = StepTimer(device)
    for _ in range(sizes.steps):
        timer(opt.step)
    ms = timer.median_ms()
    del opt, params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ms


def deploy_figures(device, sizes: Sizes) -> dict:
    """``deploy_step`` lines; returns ``general``'s fused ratio to AdamW at the largest size."""
    import torch
    from deploy_speed import make_net

    from l2o.optimizers import LearnedOptimizer
    from l2o.optimizers.deploy_backend import uncovered

    nets = {arch: make_net(arch) for arch in ("general", "general-v2", "mlp")}
    ratios = {}
    for count in sizes.deploy_params:
        shapes = square_layers(count)
        n = sum(math.prod(s) for s in shapes)
        adamw = lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True)
        adamw_ms = deploy_step_ms(adamw, shapes, device, sizes)
        emit({"figure": "deploy_step", "optimizer": "adamw_fused", "params": n, "ms": adamw_ms})
        for arch, (net, name) in nets.items():
            for backend in ("triton", "torch") if uncovered(net) is None else ("torch",):
                make = lambda p, net=net, backend=backend: LearnedOptimizer(p, net, backend=backend)
                ms = deploy_step_ms(make, shapes, device, sizes)
                ratios[(arch, backend, n)] = ms / adamw_ms
                emit(
                    {
                        "figure": "deploy_step",
                        "optimizer": arch,
                        "net": name,
                        "backend": backend,
                        "params": n,
                        "ms": ms,
                        "ratio_to_adamw_fused": ms / adamw_ms,
                    }
                )
    largest = max(n for _, _, n in ratios)
    backend = min(
        (b for a, b, n in ratios if a == "general" and n == largest),
        key=lambda b: ratios[("general", b, largest)],
    )
    return {"params": largest, "ratio": ratios[("general", backend, largest)], "backend": backend}


def meta_train_figures(device, sizes: Sizes) -> None:
    """``meta_train`` lines from ``meta_train_speed.py --estimator pes`` (its own JSON line is
    captured and reported here)."""
    import meta_train_speed

    for arch in ("lstm", "mlp"):
        argv = [
            "--estimator", "pes", "--arch", arch, "--pairs", "1", "--no-reference",
            "--B", str(sizes.meta_batch), "--K", str(sizes.unroll), "--device", device.type,
            "--meta-steps", str(sizes.meta_steps), "--repeats", str(sizes.repeats),
            "--warmup", str(sizes.warmup),
        ]  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            result = meta_train_speed.main(argv)
        emit(
            {
                "figure": "meta_train",
                "arch": arch,
                "meta_batch": sizes.meta_batch,
                "unroll": sizes.unroll,
                # every particle's step (2 per task and inner step), as the CPU benchmark counts
                "pes_particle_steps_per_s": result["inner_steps_per_s"],
                "pes_task_steps_per_s": result["inner_steps_per_s"] / 2,
                "first_order_inner_steps_per_s": result["first_order_steps_per_s"],
            }
        )


def torchrun_smoke(device) -> None:
    """``meta_train/run.py --config tiny`` as a one-process torchrun job on ``device``."""
    from meta_train.training.distributed import backend_for

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
            str(ROOT / "meta_train" / "run.py"), "--config", "tiny", "--run-dir", str(run_dir),
            f"device={device.type}", "meta_test.enabled=false",
        ]  # fmt: skip
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
        tic = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        wall = time.perf_counter() - tic
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        steps = sum('"train/meta_loss"' in line for line in lines)
        ok = proc.returncode == 0 and (run_dir / "last.pt").exists() and steps > 0
    line = {
        "figure": "torchrun_smoke",
        "backend": backend_for(device.type),
        "returncode": proc.returncode,
        "ok": ok,
        "wall_s": round(wall, 1),
        "meta_steps_logged": steps,
    }
    if not ok:
        line["stderr_tail"] = proc.stderr[-1500:]
    emit(line)
    if not ok:
        raise RuntimeError(f"torchrun smoke run failed with status {proc.returncode}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a check, not figures)")
    parser.add_argument("--dry-run", action="store_true", help="the same as --device cpu --tiny")
    parser.add_argument(
        "--figures", default=",".join(FIGURES), help=f"comma-separated subset of {FIGURES}"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    unknown = set(args.figures.split(",")) - set(FIGURES)
    if unknown:
        parser.error(f"--figures: unknown {sorted(unknown)}; choose from {list(FIGURES)}")
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu runs only with --tiny (the full sizes need a GPU)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        # the Triton kernels run under the interpreter, which must be set before triton loads;
        # the PyTorch ops that CUDA runs, not the C++ kernels (and no compile of them)
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["L2O_NATIVE"] = "0"
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # l2o, the benchmarks
    device = torch.device(args.device)
    sizes = TINY if args.tiny else FULL
    tic = time.perf_counter()
    emit(device_line(device, args.tiny))
    failed, goal = [], None
    jobs = {
        "deploy": lambda: deploy_figures(device, sizes),
        "meta_train": lambda: meta_train_figures(device, sizes),
        "torchrun": lambda: torchrun_smoke(device),
    }
    for name in args.figures.split(","):
        try:
            out = jobs[name]()
            goal = out if name == "deploy" else goal
        except Exception as exc:  # report it and go on: the other figures still count
            failed.append(name)
            emit({"figure": name, "error": f"{type(exc).__name__}: {exc}"})
            traceback.print_exc(file=sys.stderr)
    if goal is not None:
        ratio = goal["ratio"]
        emit(
            {
                "figure": "goal",
                "general_over_adamw_fused": ratio,
                "backend": goal["backend"],
                "params": goal["params"],
            }
        )
    emit({"figure": "done", "wall_s": round(time.perf_counter() - tic, 1), "failed": failed})
    return 1 if failed else 0


def device_line(device, tiny: bool) -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "figure": "device",
        "device": name,
        "tiny": tiny,
        "torch": torch.__version__,
        "triton": triton_version,
        "interpreted_triton": os.environ.get("TRITON_INTERPRET") == "1",
    }


if __name__ == "__main__":
    sys.exit(main())
