"""Figure 9: histograms of |Δθ| at several steps of training, for the L2Os, Adam and SGD, and
2026's Muon and schedule-free AdamW."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from analysis.distributions import UpdateHistogram, histograms_over_training, log_bins
from analysis.figures.fig8 import NEW_BASELINES, TASK
from analysis.figures.runs import EVAL_SEED0, Context, optimizers_for, recorded_run, task_for
from analysis.figures.tuning import TUNING, Tuning
from analysis.recording import RecordingPlan

USES_LOPT = True


@dataclass(frozen=True)
class Fig9Settings:
    hist_steps: tuple[int, ...]  # 0-based steps whose updates are histogrammed
    dataset: str | None
    tuning: Tuning
    seed: int = EVAL_SEED0  # one run per optimizer


SETTINGS = {
    "tiny": Fig9Settings(hist_steps=(0, 5, 11), dataset="mnist5k", tuning=TUNING["tiny"]),
    "quick": Fig9Settings(
        hist_steps=(0, 9, 49, 99, 199), dataset="mnist5k", tuning=TUNING["quick"]
    ),
    "full": Fig9Settings(hist_steps=(0, 9, 49, 99, 199, 499), dataset=None, tuning=TUNING["full"]),
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
    hists = {}
    for name, factory in optimizers_for(
        ctx, task, s.tuning, ["sgd", "adam"], NEW_BASELINES
    ).items():
        rec, _ = recorded_run(
            ctx, f"fig9/{name}-seed{s.seed}.rec", task, factory, steps, plan, s.seed
        )
        traj = rec.streams["trajectory"]
        hists[name] = histograms_over_training(traj["steps"], traj["updates"], edges)
    rows = [r for name, hs in hists.items() for r in histogram_rows(name, hs, edges)]
    return Fig9Data(rows, edges, s.hist_steps, hists, summarize(hists, s.hist_steps))


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
