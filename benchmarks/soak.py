"""Soak test: meta-train for a while and check that memory does not grow after the first epoch.

    python benchmarks/soak.py --minutes 30          # the issue's soak, on the default config
    python benchmarks/soak.py --meta-steps 400 --sample-every-steps 10 schedule.runs_per_epoch=5

Runs the real trainer (meta-steps, validation, checkpoints, JSONL and W&B logging, all as in
``run.py``) in this process and samples its resident memory (VmRSS) every ``--sample-every-s``
seconds or ``--sample-every-steps`` meta-steps, printing one JSON line per sample and a summary
line. Leaks from retained graphs, logging or checkpoints show as RSS that keeps rising; the
allocator's one-off growth in the first epoch (first validation, first checkpoint) does not count.
Exit status 1 when the RSS after the first epoch exceeds the first epoch's peak by more than
``--tolerance-mb`` or the fitted slope after the first epoch exceeds ``--max-slope-mb-per-h``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from meta_train.configuration.schema import load_config
from meta_train.training.parts import preflight
from meta_train.training.trainer import Trainer


def rss_mb() -> tuple[float, float]:
    """Current and peak resident set size of this process, in MiB (Linux ``/proc``)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def slope_per_hour(samples: list[dict]) -> float:
    """Least-squares slope of RSS against time, MiB per hour."""
    if len(samples) < 2:
        return 0.0
    t = [s["t_s"] for s in samples]
    y = [s["rss_mb"] for s in samples]
    tm, ym = sum(t) / len(t), sum(y) / len(y)
    var = sum((a - tm) ** 2 for a in t)
    if var == 0:
        return 0.0
    return sum((a - tm) * (b - ym) for a, b in zip(t, y)) / var * 3600


class _Done(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--meta-steps", type=int, default=None, help="stop after this many")
    parser.add_argument("--sample-every-s", type=float, default=60.0)
    parser.add_argument("--sample-every-steps", type=int, default=0, help="0: sample by time")
    parser.add_argument("--tolerance-mb", type=float, default=32.0)
    parser.add_argument("--max-slope-mb-per-h", type=float, default=50.0)
    parser.add_argument("--run-dir", default=None, help="default: a temporary folder")
    args, overrides = parser.parse_known_args(argv)
    if args.minutes is None and args.meta_steps is None:
        args.minutes = 30.0
    # a schedule long enough for the soak; meta-testing is not part of it
    cfg = load_config(
        args.config,
        ["schedule.epochs=100000", "meta_test.enabled=false", "logging.progress=false", *overrides],
    )
    preflight(cfg)
    steps_per_epoch = cfg.schedule.runs_per_epoch * cfg.meta_steps_per_run
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="l2o-soak-"))
    samples: list[dict] = []
    start = time.perf_counter()
    last_sample = -math.inf

    def sample(trainer: Trainer, record: dict) -> None:
        nonlocal last_sample
        now = time.perf_counter() - start
        step = trainer.position.global_step
        due = (
            step % args.sample_every_steps == 0
            if args.sample_every_steps
            else now - last_sample >= args.sample_every_s
        )
        stop = (args.meta_steps is not None and step >= args.meta_steps) or (
            args.minutes is not None and now >= args.minutes * 60
        )
        if due or stop or step == 1:
            last_sample = now
            rss, peak = rss_mb()
            point = {
                "t_s": round(now, 1),
                "meta_step": step,
                "epoch": step / steps_per_epoch,
                "rss_mb": round(rss, 1),
                "peak_rss_mb": round(peak, 1),
            }
            samples.append(point)
            print(json.dumps(point), flush=True)
        if stop:
            raise _Done

    trainer = Trainer(cfg, run_dir, on_meta_step=sample, console=lambda text: None)
    try:
        trainer.train()
    except _Done:
        pass
    finally:
        trainer.close()
    first = [s for s in samples if s["epoch"] <= 1.0]
    later = [s for s in samples if s["epoch"] > 1.0]
    summary: dict = {
        "summary": True,
        "config": args.config,
        "meta_steps": samples[-1]["meta_step"] if samples else 0,
        "meta_steps_per_epoch": steps_per_epoch,
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "samples": len(samples),
        "first_epoch_peak_rss_mb": max((s["rss_mb"] for s in first), default=None),
        "after_first_epoch_max_rss_mb": max((s["rss_mb"] for s in later), default=None),
        "after_first_epoch_slope_mb_per_h": round(slope_per_hour(later), 1),
        "peak_rss_mb": samples[-1]["peak_rss_mb"] if samples else None,
        "run_dir": str(run_dir),
    }
    ok = True
    if later and first:
        growth = summary["after_first_epoch_max_rss_mb"] - summary["first_epoch_peak_rss_mb"]
        summary["growth_mb"] = round(growth, 1)
        ok = growth <= args.tolerance_mb and (
            summary["after_first_epoch_slope_mb_per_h"] <= args.max_slope_mb_per_h
        )
    else:
        summary["note"] = "the soak ended within the first epoch: nothing to compare"
        ok = False
    summary["ok"] = ok
    print(json.dumps(summary), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
