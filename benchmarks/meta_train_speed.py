"""Meta-training speed: inner optimizee steps per second of meta-training (meta-gradient and
meta-optimizer step included) on the paper's classic configuration, against a straightforward
reference loop run in the same process.

    python benchmarks/meta_train_speed.py                     # classic: B=1, K=20, LSTM, CPU
    python benchmarks/meta_train_speed.py --B 8
    python benchmarks/meta_train_speed.py --K 200 --checkpoint-every 20 --no-reference
    python benchmarks/meta_train_speed.py --estimator pes --arch mlp --B 8 --K 10
    python benchmarks/meta_train_speed.py --estimator pes --arch mlp --B 8 --K 10 --competing-load 2

With ``--estimator es|pes`` the evolution-strategy estimator (``--pairs`` antithetic pairs per
task) runs interleaved with first-order truncated BPTT of the same optimizer on the same tasks;
its throughput counts every particle's step (2 · pairs · B per inner step), ``ratio`` is ES/PES
over first order, and ``peak_rss_mb`` is the process's peak after the ES/PES rounds alone (they
run first; ``first_order_peak_rss_mb`` is the peak after both).

Classic configuration: MNIST 784-20-10 sigmoid MLP (``mnist_mlp_sigmoid`` on ``mnist5k``), batch
128, LSTM 2×20 with log/sign preprocessing, unroll 20, first-order, meta-batch 1, CPU, the
default thread count (``meta_train.training.threads``; ``--threads 2`` for the paper's setting).

The reference is ``meta_train.inner_loop.reference.reference_meta_step`` on the same learned
optimizer (per-optimizee autograd, the whole graph kept, one backward per truncation). Ours and the
reference run alternately, ``--repeats`` rounds of ``--meta-steps`` meta-steps each, so both see
the same machine load; the figures are medians over rounds and ``ratio`` is the median of the
per-round ratios. ``peak_rss_mb`` is the process's peak after our loop (before the reference runs);
``reference_peak_rss_mb`` the peak after both. In the same rounds ``PaperStyleLoop`` (the paper's
loop structure: a backward through the whole retained unroll at every inner step) runs
``--paper-meta-steps`` meta-steps; ``paper_style_ratio`` is our throughput over its, the median
of the per-round ratios.

``--competing-load N`` (with ``--estimator``) measures what a busy machine does to the throughput:
see ``competing_load_main``. Every line carries the load average, before and after.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meta_train.training.threads import (
    available_cpus,
    default_threads,
    other_load,
    prefer_passive_wait,
    resolve_threads,
)

PASSIVE_WAIT = prefer_passive_wait()  # before torch loads the OpenMP runtime

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from l2o.optimizers import create  # noqa: E402
from l2o.optimizers.features import log_sign_preprocess  # noqa: E402
from l2o.tasks import get_task  # noqa: E402
from meta_train.estimators import meta_step_gradient  # noqa: E402
from meta_train.inner_loop.reference import reference_meta_step  # noqa: E402
from meta_train.inner_loop.unroll import UnrollConfig, init_inner_state  # noqa: E402


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
    """The same meta-steps through ``meta_train.inner_loop.reference.reference_meta_step``, the
    plain specification (per-optimizee autograd, whole graph, one backward)."""

    def meta_step(self) -> float:
        value, self.inner = reference_meta_step(
            self.lopt, self.meta_opt, self.task, self.inner, self.samplers, self.cfg
        )
        return value


class PaperStyleLoop:
    """The loop structure of the paper's code as its specification describes it
    (``shared/reference/paper-l2o.md``; written from that description, no code of it): the
    LSTM as two ``LSTMCell``s run once per parameter tensor, and at EVERY inner step a backward
    of that step's loss through the whole graph retained since the truncation began (quadratic
    in K; the meta-loss is the sum of the losses), then clipping and one Adam step per truncation.
    Optimizee gradients enter the LSTM detached (first order), as in ours."""

    def __init__(self, task, data, args) -> None:
        torch.manual_seed(0)
        hidden = 20
        self.cells = nn.ModuleList([nn.LSTMCell(2, hidden), nn.LSTMCell(hidden, hidden)])
        self.head = nn.Linear(hidden, 1)
        self.meta_params = [*self.cells.parameters(), *self.head.parameters()]
        self.meta_opt = torch.optim.Adam(self.meta_params, lr=1e-3)
        self.task, self.K, self.scale = task, args.K, args.output_scale
        self.model = task.make_model(0, args.device)
        self.sampler = data.sampler(task.batch_size, seed=0)
        self.theta = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.state = {
            n: [p.new_zeros(p.numel(), hidden) for _ in range(4)] for n, p in self.theta.items()
        }

    def meta_step(self) -> float:
        self.meta_opt.zero_grad(set_to_none=True)
        theta = {n: p.detach().requires_grad_(True) for n, p in self.theta.items()}
        state = {n: [s.detach() for s in v] for n, v in self.state.items()}
        total = 0.0
        for _ in range(self.K):
            x, y = self.sampler.next()
            for p in theta.values():
                p.retain_grad()
            loss = self.task.loss(functional_call(self.model, theta, (x,)), y)
            loss.backward(retain_graph=True)  # the whole unroll so far, every step
            total += loss.item()
            new_theta = {}
            for n, p in theta.items():
                h1, c1, h2, c2 = state[n]
                features = log_sign_preprocess(p.grad.detach().reshape(-1))
                h1, c1 = self.cells[0](features, (h1, c1))
                h2, c2 = self.cells[1](h1, (h2, c2))
                state[n] = [h1, c1, h2, c2]
                new_theta[n] = p + (self.head(h2) * self.scale).view_as(p)
            theta = new_theta
        self.theta = {n: p.detach() for n, p in theta.items()}
        self.state = {n: [s.detach() for s in v] for n, v in state.items()}
        nn.utils.clip_grad_norm_(self.meta_params, 1.0)
        self.meta_opt.step()
        return total / self.K


class ParticleLoop(OurLoop):
    """Meta-training with the ``es``/``pes`` estimator, as the trainer runs it: one truncation
    of all particles (``meta_step_gradient`` with the run's estimator and a per-step seed),
    then clipping and one Adam step."""

    def __init__(self, task, data, args) -> None:
        from meta_train.estimators import make_estimator

        super().__init__(task, data, args)
        self.cfg = UnrollConfig(
            length=args.K,
            meta_loss="mean",
            estimator=args.estimator,
            estimator_kwargs={"sigma": 0.01, "num_pairs": args.pairs},
        )
        self.estimator = make_estimator(self.cfg)
        self.step = 0

    def meta_step(self) -> float:
        self.meta_opt.zero_grad(set_to_none=True)
        result, self.inner = meta_step_gradient(
            self.lopt,
            self.task,
            self.inner,
            self.samplers,
            self.cfg,
            estimator=self.estimator,
            seed=self.step,
        )
        self.step += 1
        nn.utils.clip_grad_norm_(self.lopt.parameters(), 1.0)
        self.meta_opt.step()
        return result.meta_loss


def estimator_main(args, task, data) -> dict:
    """ES/PES against first-order truncated BPTT of the same optimizer, interleaved."""
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    particles = ParticleLoop(task, data, args)
    for _ in range(args.warmup):
        particles.meta_step()
    sync()
    times_es = [timed(particles, args.meta_steps)]
    sync()
    es_peak = peak_rss_mb()
    args.order = "first"
    first = OurLoop(task, data, args)
    for _ in range(args.warmup):
        first.meta_step()
    times_fo, ratios = [], []
    steps_es = args.meta_steps * args.K * args.B * 2 * args.pairs
    steps_fo = args.meta_steps * args.K * args.B
    for r in range(args.repeats):
        sync()
        t_fo = timed(first, args.meta_steps)
        sync()
        t_es = timed(particles, args.meta_steps) if r > 0 else times_es[0]
        sync()
        if r > 0:
            times_es.append(t_es)
        times_fo.append(t_fo)
        ratios.append((steps_es / t_es) / (steps_fo / t_fo))
    result = {
        "benchmark": "meta_train_speed",
        "estimator": args.estimator,
        "arch": args.arch,
        "B": args.B,
        "pairs": args.pairs,
        "K": args.K,
        "device": args.device,
        "threads": args.threads,
        "inner_steps_per_s": round(steps_es / statistics.median(times_es), 2),
        "first_order_steps_per_s": round(steps_fo / statistics.median(times_fo), 2),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        "peak_rss_mb": round(es_peak, 1),
        "first_order_peak_rss_mb": round(peak_rss_mb(), 1),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))
    return result


@contextlib.contextmanager
def competing_load(processes: int):
    """``processes`` busy-looping Python processes running beside the block (none: nothing),
    each in a session of its own, as another user's job is (with the kernel's autogroup
    scheduling, processes of one session share one session's CPU time)."""
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(processes)
    ]
    try:
        if busy:
            time.sleep(0.5)  # let them start and reach the run queue
        yield
    finally:
        for proc in busy:
            proc.kill()
        for proc in busy:
            proc.wait()


def competing_load_main(args, task, data, torch_threads: int) -> dict:
    """ES/PES throughput at one thread, at every CPU torch would use (``torch_threads``) and at
    the default's choice, each without and beside ``args.competing_load`` busy processes that
    this benchmark starts and stops itself. The default (``threads: null``) is chosen as a run
    started then would choose it (``meta_train.training.threads``), once per condition with the
    load running; per round the timings run in turn (order alternating), and ratios are taken
    within a round."""
    particles = ParticleLoop(task, data, args)
    for _ in range(args.warmup):
        particles.meta_step()
    chosen: dict[int, int] = {}
    times: dict[tuple[int, int], list[float]] = {}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats):
        for loaded in (0, 1):
            with competing_load(args.competing_load if loaded else 0):
                if loaded not in chosen:
                    chosen[loaded] = default_threads(torch_threads, *available_cpus(), other_load())
                counts = sorted({1, torch_threads, chosen[loaded]})
                for threads in counts if r % 2 == 0 else counts[::-1]:
                    torch.set_num_threads(threads)
                    times.setdefault((threads, loaded), []).append(
                        timed(particles, args.meta_steps)
                    )
    steps = args.meta_steps * args.K * args.B * 2 * args.pairs

    def per_round_ratio(num, den):  # throughput num / throughput den, median over rounds
        return round(statistics.median(b / a for a, b in zip(times[num], times[den])), 3)

    result = {
        "benchmark": "meta_train_speed",
        "mode": "competing_load",
        "estimator": args.estimator,
        "arch": args.arch,
        "B": args.B,
        "pairs": args.pairs,
        "K": args.K,
        "competing_load": args.competing_load,
        "passive_wait": PASSIVE_WAIT,
        "default_threads": {"quiet": chosen[0], "loaded": chosen[1]},
        "inner_steps_per_s": {
            f"threads_{t}_{'loaded' if ld else 'quiet'}": round(steps / statistics.median(v), 2)
            for (t, ld), v in sorted(times.items())
        },
        "default_loaded_over_one_thread_loaded": per_round_ratio((chosen[1], 1), (1, 1)),
        "default_loaded_over_default_quiet": per_round_ratio((chosen[1], 1), (chosen[0], 0)),
        f"threads_{torch_threads}_loaded_over_one_thread_loaded": per_round_ratio(
            (torch_threads, 1), (1, 1)
        ),
        "loadavg_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


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
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: meta-training's default, meta_train.training.threads)",
    )
    parser.add_argument("--output-scale", type=float, default=0.1)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=0)
    parser.add_argument("--meta-steps", type=int, default=3, help="meta-steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-steps first")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference loops")
    parser.add_argument(
        "--paper-meta-steps",
        type=int,
        default=1,
        help="meta-steps of the paper-style loop per round (PaperStyleLoop; 0: skip it)",
    )
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument(
        "--estimator",
        choices=["es", "pes"],
        default=None,
        help="run this evolution-strategy estimator against first-order BPTT (see above)",
    )
    parser.add_argument("--pairs", type=int, default=1, help="antithetic pairs per task (ES/PES)")
    parser.add_argument(
        "--competing-load",
        type=int,
        default=0,
        metavar="N",
        help="with --estimator: time it at one thread, at all of torch's threads and at the "
        "default's choice, each without and beside N busy processes (each in its own session) "
        "that the benchmark starts, and report every figure (competing_load_main)",
    )
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

    if args.paper_meta_steps and (args.arch != "lstm" or args.B != 1):
        args.paper_meta_steps = 0  # the paper's loop: one optimizee, its LSTM
    if args.competing_load < 0:
        parser.error("--competing-load must be >= 0")
    if args.competing_load and args.estimator is None:
        parser.error("--competing-load needs --estimator es|pes")
    torch_threads = torch.get_num_threads()
    args.threads = resolve_threads(args.threads)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    task = get_task("mnist_mlp_sigmoid", dataset=args.dataset)
    data = task.load_data(args.device)
    steps_per_round = args.meta_steps * args.K * args.B
    if args.competing_load:
        return competing_load_main(args, task, data, torch_threads)
    if args.estimator is not None:
        return estimator_main(args, task, data)

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
        "passive_wait": PASSIVE_WAIT,
        "mmap_threshold": args.mmap_threshold if mmap_set else None,
        "loadavg_before": round(os.getloadavg()[0], 2),
    }
    if not args.no_reference:
        ref = ReferenceLoop(task, data, args)
        for _ in range(args.warmup):
            ref.meta_step()
        paper = PaperStyleLoop(task, data, args) if args.paper_meta_steps > 0 else None
        if paper is not None:
            paper.meta_step()  # warm-up
        paper_steps = args.paper_meta_steps * args.K
        ref_times, ratios, paper_times, paper_ratios = [], [], [], []
        for r in range(args.repeats):
            t_ref = timed(ref, args.meta_steps)
            t_our = timed(ours, args.meta_steps) if r > 0 else our_times[0]
            if r > 0:
                our_times.append(t_our)
            ref_times.append(t_ref)
            ratios.append(t_ref / t_our)
            if paper is not None:
                paper_times.append(timed(paper, args.paper_meta_steps))
                paper_ratios.append((steps_per_round / t_our) / (paper_steps / paper_times[-1]))
        result["reference_steps_per_s"] = round(steps_per_round / statistics.median(ref_times), 2)
        result["ratio"] = round(statistics.median(ratios), 3)
        result["ratio_min_max"] = [round(min(ratios), 3), round(max(ratios), 3)]
        if paper is not None:
            result["paper_style_steps_per_s"] = round(
                paper_steps / statistics.median(paper_times), 2
            )
            result["paper_style_ratio"] = round(statistics.median(paper_ratios), 3)
            result["paper_style_ratio_min_max"] = [
                round(min(paper_ratios), 3),
                round(max(paper_ratios), 3),
            ]
        result["reference_peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["inner_steps_per_s"] = round(steps_per_round / statistics.median(our_times), 2)
    result["peak_rss_mb"] = round(our_peak, 1)
    result["loadavg_after"] = round(os.getloadavg()[0], 2)
    result["torch"] = torch.__version__
    result["machine"] = platform.processor() or platform.machine()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
