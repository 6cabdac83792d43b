"""The evaluation's figures: loss curves per case, and the ratio to the best tuned baseline per
case (task and horizon) at a glance."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from l2o.io import atomic_write
from meta_train.evaluation.runner import Evaluation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)


def plot_curves(ev: Evaluation, path: str | Path) -> Path:
    """One panel per case: mean training loss over the seeds that did not diverge (log scale);
    baselines at the lr tuned for the first criterion."""
    plt = _pyplot()
    crit = ev.criteria[0]
    n = len(ev.cases)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, case in zip(axes.flat, ev.cases):
        curves = [(name, None, runs) for name, runs in case.learned.items()]
        curves += [(name, *b.for_criterion(crit)) for name, b in case.baselines.items()]
        for name, lr, runs in curves:
            ok = [i for i, d in enumerate(runs.diverged) if not d]
            if not ok:
                continue
            mean = runs.losses[ok].mean(0)
            label = name if lr is None else f"{name} ({lr:g})"
            ax.plot(torch.arange(1, mean.numel() + 1), mean, lw=1.2, label=label)
        ax.set_yscale("log")
        ax.set_title(case.case.id, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0][0].set_ylabel(f"training loss (baselines tuned for {crit!r})")
    fig.suptitle(f"suite {ev.suite}: mean over {len(ev.seeds)} seeds")
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_ratios(ev: Evaluation, table: list[dict], path: str | Path) -> Path:
    """Ratio of each learned optimizer to the best tuned baseline, per case, with 95% CIs; one
    panel per criterion, below the line at 1 the learned optimizer wins."""
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter

    cases = [c.case.id for c in ev.cases]
    names = list(ev.learned)
    fig, axes = plt.subplots(
        1,
        len(ev.criteria),
        figsize=(max(5, 0.7 * len(cases) + 3) * len(ev.criteria), 4.5),
        squeeze=False,
    )
    for ax, crit in zip(axes[0], ev.criteria):
        for k, name in enumerate(names):
            xs, ys, lo, hi = [], [], [], []
            for i, case in enumerate(cases):
                r = next(
                    r
                    for r in table
                    if r["case"] == case and r["criterion"] == crit and r["optimizer"] == name
                )
                if not math.isfinite(r["ratio"]):
                    continue
                xs.append(i + (k - (len(names) - 1) / 2) * 0.15)
                ys.append(r["ratio"])
                low = r["ratio_ci_low"] if math.isfinite(r["ratio_ci_low"]) else r["ratio"]
                high = r["ratio_ci_high"] if math.isfinite(r["ratio_ci_high"]) else r["ratio"]
                lo.append(r["ratio"] - low)
                hi.append(high - r["ratio"])
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=name)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        plain = FormatStrFormatter("%.3g")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlim(-0.6, len(cases) - 0.4)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{crit}: learned / best tuned baseline (< 1: learned wins)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)
