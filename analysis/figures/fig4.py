"""Figure 4: symmetry breaking along meta-test trajectories, per optimizer.

Deviations of −Δθ from the rescale / scale / translation constraints at every step, for the L2O,
SGD, Adam, Lion (and, beyond ``--tiny``, every other registered baseline) at tuned learning rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import baselines
from analysis.figures.runs import (
    Context,
    eval_seeds,
    optimizers_for,
    symmetry_run,
    task_for,
)
from analysis.figures.stats import (
    entirely_below,
    mean_std,
    ratio_interval,
    side_of_one,
    smooth,
    t_interval,
    window_mean,
)
from analysis.figures.tuning import TUNING, Tuning
from analysis.recording import Recording
from analysis.symmetry_traces import by_kind

USES_LOPT = True
BASE = ("sgd", "adam", "lion")
# lion_sgd is figure 7's subject; adamw equals adam without weight decay
SKIP = ("lion_sgd", "adamw")

#: ``(task, kind, optimizer)`` → one ``(update magnitude, update relative, gradient magnitude,
#: loss)`` tuple of per-step curves per seed.
Curves = dict[tuple[str, str, str], list[tuple[torch.Tensor, ...]]]


@dataclass(frozen=True)
class Fig4Settings:
    tasks: tuple[str, ...]
    #: beyond SGD, Adam, Lion: "all" (every other registered baseline) or these names
    extra_baselines: str | tuple[str, ...]
    steps: int
    seeds: int
    dataset: str | None  # None: the task's own dataset (full MNIST when present)
    tuning: Tuning


SETTINGS = {
    "tiny": Fig4Settings(
        tasks=("mnist_mlp_relu_bn",),
        extra_baselines=(),
        steps=12,
        seeds=1,
        dataset="mnist5k",
        tuning=TUNING["tiny"],
    ),
    "quick": Fig4Settings(
        tasks=("mnist_mlp_relu", "mnist_mlp_relu_bn"),
        extra_baselines="all",
        steps=200,
        seeds=3,
        dataset="mnist5k",
        tuning=TUNING["quick"],
    ),
    "full": Fig4Settings(
        tasks=("mnist_mlp_relu", "mnist_mlp_relu_bn", "mnist_mlp_relu_2layer", "mnist_conv"),
        # the paper's four optimizers and 2026's two: the other handcrafted baselines (GYRO, GAP,
        # HysteroGrad, AdamSyre, LARS) at 4 tasks x 5 seeds x 500 steps do not fit a session on
        # 2 CPU cores; --quick runs them all
        extra_baselines=("muon", "sf_adamw"),
        steps=500,
        seeds=5,
        dataset=None,
        tuning=TUNING["full"],
    ),
}


@dataclass
class Fig4Data:
    rows: list[dict]
    curves: Curves
    summary: dict


def compute(ctx: Context, s: Fig4Settings) -> Fig4Data:
    extra = list(s.extra_baselines)
    if s.extra_baselines == "all":
        extra = [b for b in baselines.available() if b not in BASE and b not in SKIP]
    rows: list[dict] = []
    curves: Curves = {}
    for task_name in s.tasks:
        task = task_for(task_name, s.dataset)
        for name, factory in optimizers_for(ctx, task, s.steps, s.tuning, BASE, extra).items():
            for seed in eval_seeds(s.seeds):
                rec, _ = symmetry_run(ctx, "fig4", task, name, factory, seed, s.steps)
                rows += add_run(curves, task_name, name, seed, rec)
    return Fig4Data(rows, curves, summarize(curves, s.steps))


def add_run(curves: Curves, task_name: str, name: str, seed: int, rec: Recording) -> list[dict]:
    """Add one recorded run's curves per kind to ``curves``; returns its CSV rows."""
    sym = rec.streams["symmetry"]
    kinds = rec.meta["structures"]["kinds"]
    mags = by_kind(sym["table"], kinds, "magnitude")
    rels = by_kind(sym["table"], kinds, "relative")
    loss = sym["loss"]
    rows = []
    for kind in mags:
        curves.setdefault((task_name, kind, name), []).append(
            (mags[kind][:, 0], rels[kind][:, 0], mags[kind][:, 1], loss)
        )
        for t in range(loss.shape[0]):
            rows.append(
                {
                    "task": task_name,
                    "optimizer": name,
                    "seed": seed,
                    "step": t,
                    "kind": kind,
                    "update_magnitude": float(mags[kind][t, 0]),
                    "update_relative": float(rels[kind][t, 0]),
                    "gradient_magnitude": float(mags[kind][t, 1]),
                    "gradient_relative": float(rels[kind][t, 1]),
                    "loss": float(loss[t]),
                }
            )
    return rows


def seed_scalars(runs: list[tuple[torch.Tensor, ...]]) -> dict[str, list[float]]:
    """Per seed (in run order): mean update magnitude and relative deviation over the steps, and
    the final loss (mean of the last 10 steps), the numbers the summary's intervals are over."""
    return {
        "magnitude": [float(r[0].double().mean()) for r in runs],
        "relative": [float(r[1].double().mean()) for r in runs],
        "final_loss": [float(r[3][-10:].double().mean()) for r in runs],
    }


def summarize(curves: Curves, steps: int) -> dict:
    """Per curve: mean deviations, early vs later, loss, and their correlation, with 95%
    intervals over seeds (Student-t; ratios to Adam by paired percentile bootstrap); a verdict
    line per (task, kind) comparing L2O and Lion with Adam; ``questions`` (``questions``)."""
    early = max(1, steps // 10)
    table = {}
    for (task_name, kind, name), runs in curves.items():
        mag, _ = mean_std([r[0] for r in runs])
        rel, _ = mean_std([r[1] for r in runs])
        loss, _ = mean_std([r[3] for r in runs])
        entry = {
            "mean_magnitude": float(mag.mean()),
            "mean_relative": float(rel.mean()),
            "relative_first_10pct": window_mean(rel, 0, early),
            "relative_rest": window_mean(rel, early, steps),
            "loss_first_10pct": window_mean(loss, 0, early),
            "final_loss": float(loss[-10:].mean()),
        }
        if mag.shape[0] > 100:
            entry["magnitude_at_step_100"] = float(mag[100])
        # does the deviation come with the fast loss decrease? correlation of the per-step
        # deviation with the per-step loss drop (both smoothed over 5 steps)
        drop = -(loss[1:] - loss[:-1])
        if drop.numel() > 10:
            d, r = smooth(drop), smooth(mag[:-1])
            entry["corr_deviation_vs_loss_drop"] = float(torch.corrcoef(torch.stack([d, r]))[0, 1])
        per_seed = seed_scalars(runs)
        entry["mean_magnitude_ci95"] = t_interval(per_seed["magnitude"])["ci95"]
        entry["mean_relative_ci95"] = t_interval(per_seed["relative"])["ci95"]
        entry["final_loss_ci95"] = t_interval(per_seed["final_loss"])["ci95"]
        entry["seeds"] = len(runs)
        adam_runs = curves.get((task_name, kind, "Adam"))
        if adam_runs is not None and len(adam_runs) == len(runs):
            adam = seed_scalars(adam_runs)
            for key in ("magnitude", "relative"):
                ratio = ratio_interval(per_seed[key], adam[key])
                entry[f"{key}_ratio_to_adam"] = ratio["mean"]
                entry[f"{key}_ratio_to_adam_ci95"] = ratio["ci95"]
        table[f"{task_name}/{kind}/{name}"] = entry
    verdict = []
    for task_name, kind in sorted({(t, k) for t, k, _ in curves}):
        entries = {
            n: table[f"{task_name}/{kind}/{n}"] for t, k, n in curves if (t, k) == (task_name, kind)
        }
        adam = entries.get("Adam")
        parts = []
        for n in ("L2O", "Lion"):
            if n in entries and adam is not None:
                ratio = entries[n]["mean_magnitude"] / max(adam["mean_magnitude"], 1e-30)
                parts.append(
                    f"{n}/Adam magnitude ×{ratio:.3g}, relative "
                    f"{entries[n]['mean_relative']:.3g} vs {adam['mean_relative']:.3g}"
                )
        sgd = entries.get("SGD")
        if sgd is not None:
            parts.append(f"SGD relative {sgd['mean_relative']:.1e}")
        verdict.append(f"{task_name}/{kind}: " + "; ".join(parts))
    answers = questions(curves)
    verdict += [f"{task_name}: {a['answer']}" for task_name, a in answers.items()]
    return {"per_curve": table, "questions": answers, "verdict": verdict}


def questions(curves: Curves) -> dict:
    """Per task: do the optimizers that beat tuned Adam (final-loss 95% interval entirely below
    Adam's) break the symmetries more or less than Adam? For each optimizer, its final loss and
    symmetry deviation (relative deviation of −Δθ averaged over steps and structure kinds) as
    ratios to Adam's, with paired-bootstrap intervals over seeds; "more"/"less" when the
    deviation ratio's interval lies above/below 1."""
    out = {}
    for task_name in sorted({t for t, _, _ in curves}):
        names = list(dict.fromkeys(n for t, _, n in curves if t == task_name))
        kinds = sorted({k for t, k, _ in curves if t == task_name})
        if "Adam" not in names:
            continue
        scalars = {}
        for name in names:
            by_kind_seed = [seed_scalars(curves[(task_name, k, name)]) for k in kinds]
            scalars[name] = {
                "final_loss": by_kind_seed[0]["final_loss"],  # one run: the same for each kind
                "deviation": [
                    sum(vals) / len(vals)
                    for vals in zip(*(s["relative"] for s in by_kind_seed), strict=True)
                ],
            }
        adam = scalars["Adam"]
        adam_loss = t_interval(adam["final_loss"])
        per_optimizer = {}
        for name in names:
            if name == "Adam" or len(scalars[name]["final_loss"]) != len(adam["final_loss"]):
                continue
            loss = t_interval(scalars[name]["final_loss"])
            dev_ratio = ratio_interval(scalars[name]["deviation"], adam["deviation"])
            per_optimizer[name] = {
                "final_loss": loss,
                "final_loss_ratio_to_adam": ratio_interval(
                    scalars[name]["final_loss"], adam["final_loss"]
                ),
                "deviation_ratio_to_adam": dev_ratio,
                "beats_adam": entirely_below(loss, adam_loss),
                "breaks_symmetries_vs_adam": side_of_one(dev_ratio),
            }
        out[task_name] = {
            "adam_final_loss": adam_loss,
            "per_optimizer": per_optimizer,
            "answer": answer(per_optimizer),
        }
    return out


def answer(per_optimizer: dict[str, dict]) -> str:
    """The question's answer in one line, from ``questions``' entries of one task."""
    if not per_optimizer:
        return "beats tuned Adam? nothing to compare: no optimizer ran Adam's seeds"
    if any(e["beats_adam"] is None for e in per_optimizer.values()):
        return "beats tuned Adam? undetermined: the intervals need at least 2 seeds"
    winners = [n for n, e in per_optimizer.items() if e["beats_adam"]]
    if not winners:
        return "no optimizer beats tuned Adam (final-loss 95% interval entirely below Adam's)"
    groups = {side: [] for side in ("more", "less", "unclear")}
    for name in winners:
        groups[per_optimizer[name]["breaks_symmetries_vs_adam"]].append(name)
    return (
        f"beat tuned Adam: {', '.join(winners)}; of them break the symmetries more than Adam: "
        f"{', '.join(groups['more']) or 'none'}; less: {', '.join(groups['less']) or 'none'}; "
        f"not clearly either: {', '.join(groups['unclear']) or 'none'}"
    )
