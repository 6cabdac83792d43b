"""Figure 8: heavy tails of gradient vs update noise, and the update covariance.

At a few probe steps the recorder evaluates the gradient and the update on many minibatches at
the same state; the tail index α and the covariance of each are compared across optimizers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from analysis.covariance import covariance_stats
from analysis.figures.runs import Context, eval_seeds, optimizers_for, recorded_run, task_for
from analysis.figures.stats import finite_mean, t_interval
from analysis.figures.tuning import TUNING, Tuning
from analysis.heavy_tail import tail_index
from analysis.recording import RecordingPlan

USES_LOPT = True
TASK = "mnist_mlp_sigmoid"  # shared with figure 9
#: 2026's optimizers beside the paper's, at tuned learning rates (figures 8 and 9; figure 4 runs
#: every registered baseline): Muon and schedule-free AdamW (what the recorder records for
#: each: ``analysis.recording``'s docstring). Optional: left out with a warning if no grid
#: learning rate trains the task.
NEW_BASELINES = ("muon", "sf_adamw")


@dataclass(frozen=True)
class Fig8Settings:
    probe_steps: tuple[int, ...]  # the run lasts until the last one
    probe_batches: int
    seeds: int
    dataset: str | None
    tuning: Tuning


SETTINGS = {
    "tiny": Fig8Settings(
        probe_steps=(1, 10), probe_batches=8, seeds=1, dataset="mnist5k", tuning=TUNING["tiny"]
    ),
    "quick": Fig8Settings(
        probe_steps=(1, 50, 200),
        probe_batches=32,
        seeds=3,
        dataset="mnist5k",
        tuning=TUNING["quick"],
    ),
    "full": Fig8Settings(
        probe_steps=(1, 10, 50, 100, 200, 500),
        probe_batches=128,
        seeds=5,
        dataset=None,
        tuning=TUNING["full"],
    ),
}


@dataclass
class Fig8Data:
    rows: list[dict]
    names: list[str]
    per_optimizer: dict[str, dict[str, float]]
    summary: dict


def compute(ctx: Context, s: Fig8Settings) -> Fig8Data:
    task = task_for(TASK, s.dataset)
    plan = RecordingPlan(probe_steps=s.probe_steps, probe_batches=s.probe_batches, symmetry=False)
    rows = []
    # a probe at step k takes the update of step k + 1 from the state after k steps
    optimizers = optimizers_for(
        ctx, task, max(s.probe_steps) + 1, s.tuning, ["sgd", "adam", "lion"], NEW_BASELINES
    )
    for name, factory in optimizers.items():
        for seed in eval_seeds(s.seeds):
            rec, _ = recorded_run(
                ctx, f"fig8/{name}-seed{seed}.rec", task, factory, max(s.probe_steps), plan, seed
            )
            probe = rec.streams["probe"]
            for i, step in enumerate(probe["steps"].tolist()):
                rows.append(probe_row(name, seed, step, probe["grads"][i], probe["updates"][i]))
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    agg = aggregate(rows, names)
    summary = {
        "per_optimizer": agg,
        "per_optimizer_ci95": intervals(rows, names),
        "verdict": verdict(agg, names),
    }
    return Fig8Data(rows, names, agg, summary)


def probe_row(name: str, seed: int, step: int, grads: torch.Tensor, updates: torch.Tensor) -> dict:
    """Tail indices and covariance of the gradients and updates (minibatches × coordinates)."""
    row = {"optimizer": name, "seed": seed, "step": step}
    for label, x in (("grad", grads), ("update", updates)):
        row[f"alpha_{label}_pooled"] = tail_index(x).alpha
        row[f"alpha_{label}_standardized"] = tail_index(x, standardize=True).alpha
        cov = covariance_stats(x, k=3)
        row[f"cov_trace_{label}"] = cov.trace
        row[f"cov_top_{label}"] = float(cov.top_eigenvalues[0])
        mean_sq = float(x.double().mean(0).pow(2).sum())
        # trace relative to the mean's energy: variability of the direction itself
        # (no update at all, e.g. at the end of a schedule: undefined, not infinite)
        row[f"cov_trace_rel_{label}"] = (
            cov.trace / mean_sq if mean_sq > 0 else math.nan if cov.trace == 0 else math.inf
        )
    return row


def aggregate(rows: list[dict], names: list[str]) -> dict[str, dict[str, float]]:
    """Per optimizer, the mean over seeds and probe steps of each defined α and covariance."""
    return {
        n: {
            k: finite_mean([r[k] for r in rows if r["optimizer"] == n])
            for k in rows[0]
            if k.startswith(("alpha", "cov"))
        }
        for n in names
    }


def intervals(rows: list[dict], names: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per optimizer and measure, the 95% Student-t interval over seeds of each seed's mean over
    the probe steps (defined values only, as ``aggregate``; a seed with none makes it NaN)."""
    keys = [k for k in rows[0] if k.startswith(("alpha", "cov"))]
    out = {}
    for n in names:
        seeds = sorted({r["seed"] for r in rows if r["optimizer"] == n})
        by_seed = [[r for r in rows if r["optimizer"] == n and r["seed"] == s] for s in seeds]
        out[n] = {
            k: t_interval([finite_mean([r[k] for r in runs]) for runs in by_seed])["ci95"]
            for k in keys
        }
    return out


def verdict(agg: dict[str, dict[str, float]], names: list[str]) -> list[str]:
    """Does the L2O have less heavy-tailed updates than gradients, and the largest covariance?"""
    lines = []
    if "L2O" in agg:
        a = agg["L2O"]
        others = [n for n in names if n != "L2O"]
        lines.append(
            f"L2O α(update) {a['alpha_update_pooled']:.3g} vs α(grad) {a['alpha_grad_pooled']:.3g} "
            f"(pooled; standardized {a['alpha_update_standardized']:.3g} vs "
            f"{a['alpha_grad_standardized']:.3g}): less heavy-tailed updates: "
            f"{a['alpha_update_pooled'] > a['alpha_grad_pooled']}"
        )
        for key, label in (
            ("cov_trace_update", "update covariance trace"),
            ("cov_trace_rel_update", "trace / ‖mean update‖² (scale-free)"),
        ):
            largest = all(a[key] > agg[n][key] for n in others)
            lines.append(
                f"{label}: "
                + ", ".join(f"{n} {agg[n][key]:.3g}" for n in names)
                + f"; L2O largest: {largest}"
            )
    return lines


def update_trace_by_step(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """Probe steps and the update covariance trace averaged over seeds, for one optimizer."""
    by_step: dict[int, list[float]] = {}
    for r in rows:
        if r["optimizer"] == name:
            by_step.setdefault(r["step"], []).append(r["cov_trace_update"])
    steps = sorted(by_step)
    return steps, [sum(by_step[t]) / len(by_step[t]) for t in steps]
