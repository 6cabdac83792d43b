"""Figure 9: histograms of |Δθ| at several steps of training, for the L2Os, Adam and SGD, and
2026's Muon and schedule-free AdamW.

The histograms (PNG, CSV) are the first seed's run, as the paper's; the summary's median |Δθ|
per step comes with a 95% Student-t interval over ``seeds`` runs (the median itself, the
verdict's number, stays the first seed's)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from analysis.distributions import UpdateHistogram, histograms_over_training, log_bins
from analysis.figures.fig8 import NEW_BASELINES, TASK
from analysis.figures.runs import EVAL_SEED0, Context, optimizers_for, recorded_run, task_for
from analysis.figures.stats import t_interval
from analysis.figures.tuning import TUNING, Tuning
from analysis.recording import RecordingPlan

USES_LOPT = True
#: 1-based steps whose minibatch training loss the summary gives, mean and 95% interval over the
#: seeds: the paper quotes its L2O against Adam at these (≈ 0.6 / 0.3 / 0.25 vs 1.3 / 0.35 / 0.30)
LOSS_STEPS = (10, 100, 200)


@dataclass(frozen=True)
class Fig9Settings:
    hist_steps: tuple[int, ...]  # 0-based steps whose updates are histogrammed
    dataset: str | None
    tuning: Tuning
    seed: int = EVAL_SEED0  # the first seed: its histograms are the figure and the CSV
    seeds: int = 1  # runs per optimizer: the medians' 95% intervals are over them


SETTINGS = {
    "tiny": Fig9Settings(hist_steps=(0, 5, 11), dataset="mnist5k", tuning=TUNING["tiny"], seeds=2),
    "quick": Fig9Settings(
        hist_steps=(0, 9, 49, 99, 199), dataset="mnist5k", tuning=TUNING["quick"], seeds=3
    ),
    "full": Fig9Settings(
        hist_steps=(0, 9, 49, 99, 199, 499), dataset=None, tuning=TUNING["full"], seeds=5
    ),
}


@dataclass
class Fig9Data:
    rows: list[dict]
    edges: torch.Tensor
    hist_steps: tuple[int, ...]
    hists: dict[str, list[UpdateHistogram]]
    summary: dict


def compute(ctx: Context, s: Fig9Settings) -> Fig9Data:
    task = task_for(TASK, s.dataset)
    edges = log_bins(1e-9, 1e1, 60)
    plan = RecordingPlan(trajectory_steps=s.hist_steps, symmetry=False)
    steps = max(s.hist_steps) + 1
    hists, seed_medians, seed_losses = {}, {}, {}
    optimizers = optimizers_for(ctx, task, steps, s.tuning, ["sgd", "adam"], NEW_BASELINES)
    for name, factory in optimizers.items():
        for seed in range(s.seed, s.seed + s.seeds):
            rec, result = recorded_run(
                ctx, f"fig9/{name}-seed{seed}.rec", task, factory, steps, plan, seed
            )
            for step in (k for k in LOSS_STEPS if k <= steps):
                loss = float(result.train_losses[step - 1])
                seed_losses.setdefault(name, {}).setdefault(step, []).append(loss)
            traj = rec.streams["trajectory"]
            seed_hists = histograms_over_training(traj["steps"], traj["updates"], edges)
            hists.setdefault(name, seed_hists)  # the first seed's are drawn
            for h in seed_hists:
                seed_medians.setdefault(name, {}).setdefault(h.step + 1, []).append(h.median)
    rows = [r for name, hs in hists.items() for r in histogram_rows(name, hs, edges)]
    summary = summarize(hists, s.hist_steps)
    summary["median_abs_update_ci95"] = {
        n: {step: t_interval(values)["ci95"] for step, values in by_step.items()}
        for n, by_step in seed_medians.items()
    }
    summary["training_loss_at_step"] = {
        n: {step: t_interval(values) for step, values in by_step.items()}
        for n, by_step in seed_losses.items()
    }
    summary["seeds"] = s.seeds
    return Fig9Data(rows, edges, s.hist_steps, hists, summary)


def histogram_rows(name: str, hists: list[UpdateHistogram], edges: torch.Tensor) -> list[dict]:
    return [
        {
            "optimizer": name,
            "step": h.step,
            "bin_low": float(edges[b]),
            "bin_high": float(edges[b + 1]),
            "fraction": float(h.density[b]),
            "fraction_zero": h.zeros,
            "median_abs_update": h.median,
        }
        for h in hists
        for b in range(len(h.density))
    ]


def summarize(hists: dict[str, list[UpdateHistogram]], hist_steps: tuple[int, ...]) -> dict:
    """Median |Δθ| per optimizer and 1-based step; is the L2O's largest at first, and does it
    approach Adam's (in log10) along training?"""
    medians = {n: {h.step + 1: h.median for h in hs} for n, hs in hists.items()}
    verdict = ""
    if "L2O" in medians and "Adam" in medians:
        first = {n: med[hist_steps[0] + 1] for n, med in medians.items()}
        gaps = [
            abs(math.log10(max(medians["L2O"][s + 1], 1e-30) / max(medians["Adam"][s + 1], 1e-30)))
            for s in hist_steps
        ]
        verdict = (
            f"median |Δθ| at step {hist_steps[0] + 1}: "
            + ", ".join(f"{n} {v:.3g}" for n, v in first.items())
            + f"; L2O largest: {first['L2O'] == max(first.values())}; |log10(L2O/Adam)| "
            + " → ".join(f"{g:.2f}" for g in gaps)
            + f"; approaches Adam: {gaps[-1] < gaps[0]}"
        )
    return {"median_abs_update": medians, "verdict": verdict}
