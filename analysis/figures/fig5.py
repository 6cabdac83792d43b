"""Figure 5: L2Os meta-trained with the symmetry regularizer at several strengths, meta-tested.

Meta-training goes through the ``meta_train/run.py`` command line (analysis never imports
``meta_train``); each run's ``best.pt`` is then recorded on the task it was trained on. The run
folders are ``OUT/fig5_runs/reg_mul=R``: a finished run (its ``summary.json`` exists) is reused,
an unfinished one (``last.pt`` but no ``summary.json``) is continued with ``--resume``, both only
if its ``config.yaml`` holds the values the settings ask for (else a one-line error).
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from analysis.figures.runs import (
    Context,
    SettingsMismatch,
    eval_seeds,
    lopt_factory,
    symmetry_run,
    task_for,
)
from analysis.figures.stats import mean_std, t_interval
from analysis.symmetry_traces import by_kind

USES_LOPT = False  # it trains its own

#: ``reg_mul`` → one ``(loss, mean relative deviation, summed magnitude)`` per seed.
Curves = dict[float, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class Fig5Settings:
    reg_muls: tuple[float, ...]  # the first is the unregularized reference
    overrides: tuple[str, ...]  # meta_train/run.py arguments
    steps: int  # meta-test steps
    seeds: int
    dataset: str | None


SETTINGS = {
    "tiny": Fig5Settings(
        reg_muls=(0.0, 1.0),
        overrides=("--config=tiny", "task.name=mnist_mlp_relu_bn"),
        steps=12,
        seeds=1,
        dataset="mnist5k",
    ),
    "quick": Fig5Settings(
        reg_muls=(0.0, 1e-3, 1.0),
        overrides=(
            "--config=relu_bn",
            "task.dataset=mnist5k",
            "schedule.epochs=1",
            "schedule.runs_per_epoch=8",
            "schedule.horizon=100",
            "unroll.length=20",
            "validation.steps=100",
            "validation.seeds=1",
        ),
        steps=200,
        seeds=3,
        dataset="mnist5k",
    ),
    "full": Fig5Settings(
        reg_muls=(0.0, 1e-3, 1.0),
        # the paper meta-trains 50 epochs; 3 meta-trainings of 50 epochs (about 1 h each on a
        # free core) do not fit one session on 2 shared CPU cores beside the paper's LSTM:
        # 10 epochs (200 runs of 200 steps) is the most that did
        overrides=("--config=relu_bn", "schedule.epochs=10"),
        steps=500,
        seeds=5,
        dataset=None,
    ),
}


@dataclass
class Fig5Data:
    rows: list[dict]
    curves: Curves
    summary: dict


def compute(ctx: Context, s: Fig5Settings) -> Fig5Data:
    rows: list[dict] = []
    curves: Curves = {}
    task = None
    for reg_mul in s.reg_muls:
        best = meta_train_with_regularization(ctx, s, reg_mul)
        task = task_for(run_task(best.parent), s.dataset)
        for seed in eval_seeds(s.seeds):
            rec, result = symmetry_run(
                ctx, "fig5", task, f"reg{reg_mul:g}", lopt_factory(best, s.steps), seed, s.steps
            )
            sym = rec.streams["symmetry"]
            kinds = rec.meta["structures"]["kinds"]
            rel = by_kind(sym["table"], kinds, "relative")
            total_rel = torch.stack([v[:, 0] for v in rel.values()]).mean(0)
            # what the regularizer penalizes: the paper's summed deviation over all structures
            total_mag = sum(v[:, 0] for v in by_kind(sym["table"], kinds, "magnitude").values())
            curves.setdefault(reg_mul, []).append((sym["loss"], total_rel, total_mag))
            for t in range(sym["loss"].shape[0]):
                rows.append(
                    {
                        "reg_mul": reg_mul,
                        "seed": seed,
                        "step": t,
                        "loss": float(sym["loss"][t]),
                        "relative_deviation": float(total_rel[t]),
                        "magnitude_deviation": float(total_mag[t]),
                        "test_loss": result.test_loss,
                    }
                )
    return Fig5Data(rows, curves, summarize(curves, s.reg_muls, task.name if task else "?"))


def seed_ci95(curves: list[torch.Tensor]) -> list[float]:
    """The 95% interval over seeds of each seed's mean of its curve."""
    return t_interval([float(c.double().mean()) for c in curves])["ci95"]


def summarize(curves: Curves, reg_muls: tuple[float, ...], task_name: str) -> dict:
    """Loss and deviations per ``reg_mul`` with 95% Student-t intervals over seeds; the verdict
    compares the first and the last."""
    summary = {}
    for reg_mul, runs in curves.items():
        loss, _ = mean_std([r[0] for r in runs])
        dev, _ = mean_std([r[1] for r in runs])
        mag, _ = mean_std([r[2] for r in runs])
        summary[f"{reg_mul:g}"] = {
            "final_loss": float(loss[-10:].mean()),
            "mean_loss": float(loss.mean()),
            "mean_magnitude_deviation": float(mag.mean()),
            "mean_relative_deviation": float(dev.mean()),
            "final_loss_ci95": seed_ci95([r[0][-10:] for r in runs]),
            "mean_magnitude_deviation_ci95": seed_ci95([r[2] for r in runs]),
            "mean_relative_deviation_ci95": seed_ci95([r[1] for r in runs]),
            "seeds": len(runs),
        }
    keys = [f"{r:g}" for r in reg_muls]
    unreg, strongest = summary[keys[0]], summary[keys[-1]]
    verdict = (
        f"task {task_name}: final loss reg_mul=0 {unreg['final_loss']:.3g} vs "
        f"reg_mul={keys[-1]} {strongest['final_loss']:.3g}; deviation "
        f"magnitude {unreg['mean_magnitude_deviation']:.3g} → "
        f"{strongest['mean_magnitude_deviation']:.3g}, relative "
        f"{unreg['mean_relative_deviation']:.3g} → {strongest['mean_relative_deviation']:.3g}. "
        f"Regularization hurts: {strongest['final_loss'] > unreg['final_loss']}"
    )
    return {"per_reg_mul": summary, "verdict": verdict}


def run_py() -> list[str]:
    """The meta-training command: the checkout's script, else the installed module."""
    script = Path(__file__).resolve().parents[2] / "meta_train" / "run.py"
    return (
        [sys.executable, str(script)]
        if script.exists()
        else [sys.executable, "-m", "meta_train.run"]
    )


#: Keys that do not change what a meta-training computes: not compared with a run's config.
IGNORED_KEYS = ("threads", "logging.", "wandb.", "run_dir")
PAUSE_SECONDS = 1800.0  # a gap this long between two metrics lines is a pause, not work


def meta_train_args(s: Fig5Settings, reg_mul: float) -> list[str]:
    """The ``meta_train/run.py`` arguments of one regularization strength (no run folder)."""
    kind = "symmetry" if reg_mul > 0 else "none"
    args = [
        *s.overrides,
        f"regularization.kind={kind}",
        "meta_test.enabled=false",  # this figure meta-tests the result itself
        "wandb.mode=disabled",
        "logging.progress=false",
    ]
    if reg_mul > 0:
        args.append(f"regularization.reg_mul={reg_mul}")
    if s.dataset and not any(a.startswith("task.dataset=") for a in args):
        args.append(f"task.dataset={s.dataset}")
    return args


def meta_train_with_regularization(ctx: Context, s: Fig5Settings, reg_mul: float) -> Path:
    """Meta-train through the CLI, reusing a finished run and continuing an unfinished one
    (module docstring); returns its ``best.pt``. Its compute time is added to ``ctx``."""
    run_dir = ctx.out / f"fig5_runs/reg_mul={reg_mul:g}"
    best = run_dir / "best.pt"
    args = meta_train_args(s, reg_mul)
    if (run_dir / "config.yaml").exists():
        check_run_config(run_dir, args)
    if not (run_dir / "summary.json").exists():
        if (run_dir / "last.pt").exists():
            command = [*run_py(), f"--resume={run_dir}"]
        else:  # new, or stopped before its first checkpoint: meta_train starts it afresh
            command = [*run_py(), *args, f"--run-dir={run_dir}"]
        log = ctx.path(f"fig5_runs/reg_mul={reg_mul:g}.log")
        with open(log, "a") as f:
            proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0 or not (run_dir / "summary.json").exists():
            tail = log.read_text()[-2000:]
            raise RuntimeError(f"meta-training failed ({' '.join(command)}), log {log}:\n{tail}")
    if not best.exists():
        raise RuntimeError(f"meta-training {run_dir} finished without a best.pt")
    ctx.compute_seconds += meta_training_seconds(run_dir / "metrics.jsonl")
    return best


def check_run_config(run_dir: Path, args: list[str]) -> None:
    """Raise ``SettingsMismatch`` (one line) when the run's ``config.yaml`` differs from a value
    ``args`` set (``--config=NAME`` is the config's ``name``; ``IGNORED_KEYS`` are skipped)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    for arg in args:
        if arg.startswith("--config="):
            key, wanted = "name", arg.split("=", 1)[1]
        elif arg.startswith("--"):
            continue
        else:
            key, wanted = arg.split("=", 1)
        if key.startswith(IGNORED_KEYS):
            continue
        found = cfg
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if not same_value(found, wanted):
            raise SettingsMismatch(
                f"fig5: existing run {run_dir} has {key}={found}, the settings ask for "
                f"{key}={wanted}; move it away or use another --out"
            )


def same_value(found, wanted: str) -> bool:
    """Does a config value equal an override's text (numbers by value: 1e-3 == 0.001)?"""
    value = yaml.safe_load(wanted)
    if found == value:
        return True
    try:
        return float(found) == float(wanted)
    except (TypeError, ValueError):
        return str(found) == str(wanted)


def meta_training_seconds(metrics: Path) -> float:
    """A meta-training's compute time from its ``metrics.jsonl`` timestamps: the sum of the gaps
    between consecutive lines, leaving out pauses (a gap over ``PAUSE_SECONDS``: the run was
    stopped and resumed later). Time before the first line is not counted."""
    if not metrics.exists():
        return 0.0
    times = []
    for line in metrics.read_text().splitlines():
        if line.strip():
            t = json.loads(line).get("time")
            if isinstance(t, (int, float)) and math.isfinite(t):
                times.append(float(t))
    return sum(b - a for a, b in itertools.pairwise(times) if 0 <= b - a <= PAUSE_SECONDS)


def run_task(run_dir: Path) -> str:
    """The task a meta-training run used, from its ``config.yaml``."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return cfg["task"]["name"]
