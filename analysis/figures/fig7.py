"""Figure 7: the Lion–SGD interpolation, symmetry breaking vs final loss over α.

Update = α·Δθ_Lion + (1−α)·Δθ_SGD. Each part runs at its own best learning rate (grid search of
pure Lion and of pure SGD with momentum 0.9, the paper's SGD part), so α = 0 and α = 1 are the
tuned SGD and Lion; ``--paper-lrs`` uses the paper's fixed lr 0.5 (SGD) and 0.005 (Lion) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.figures.runs import (
    Context,
    OptimizerFactory,
    baseline_factory,
    eval_seeds,
    symmetry_run,
    task_for,
)
from analysis.figures.stats import spearman, t_interval
from analysis.figures.tuning import TUNING, Tuning
from analysis.recording import Recording
from analysis.symmetry_traces import by_kind
from l2o.training import TrainResult

USES_LOPT = False
TASK = "mnist_mlp_relu"
MOMENTUM = 0.9  # the paper's SGD part: SGD with momentum 0.9
PAPER_LRS = (0.5, 0.005)  # (SGD, Lion) learning rates of the paper's interpolation runs


@dataclass(frozen=True)
class Fig7Settings:
    alphas: tuple[float, ...]
    steps: int
    seeds: int
    dataset: str | None
    tuning: Tuning
    paper_lrs: bool = False  # the paper's fixed learning rates instead of tuned ones


SETTINGS = {
    "tiny": Fig7Settings(
        alphas=(0.0, 0.5, 1.0), steps=12, seeds=1, dataset="mnist5k", tuning=TUNING["tiny"]
    ),
    "quick": Fig7Settings(
        alphas=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
        steps=200,
        seeds=3,
        dataset="mnist5k",
        tuning=TUNING["quick"],
    ),
    "full": Fig7Settings(
        alphas=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
        steps=500,
        seeds=5,
        dataset=None,
        tuning=TUNING["full"],
    ),
}


@dataclass
class Fig7Data:
    rows: list[dict]
    task_name: str
    summary: dict


def compute(ctx: Context, s: Fig7Settings) -> Fig7Data:
    task = task_for(TASK, s.dataset)
    if s.paper_lrs:
        lr_sgd, lr_lion = PAPER_LRS
    else:
        lr_sgd = ctx.tuned_lr(task, "sgd", s.tuning, momentum=MOMENTUM)
        lr_lion = ctx.tuned_lr(task, "lion", s.tuning)
    rows = []
    for alpha in s.alphas:
        factory = lion_sgd_factory(alpha, lr_lion, lr_sgd)
        for seed in eval_seeds(s.seeds):
            rec, result = symmetry_run(ctx, "fig7", task, f"alpha{alpha:g}", factory, seed, s.steps)
            rows.append(run_row(alpha, seed, rec, result))
    summary = {
        "learning_rates": "paper" if s.paper_lrs else "tuned",
        "lr_sgd": lr_sgd,
        "lr_lion": lr_lion,
        **summarize(rows),
    }
    return Fig7Data(rows, task.name, summary)


def lion_sgd_factory(alpha: float, lr_lion: float, lr_sgd: float) -> OptimizerFactory:
    return baseline_factory("lion_sgd", lr_lion, alpha=alpha, sgd_lr=lr_sgd, momentum=MOMENTUM)


def run_row(alpha: float, seed: int, rec: Recording, result: TrainResult) -> dict:
    """One run's CSV row: losses and mean deviations per kind and over kinds."""
    sym = rec.streams["symmetry"]
    kinds = rec.meta["structures"]["kinds"]
    rel = by_kind(sym["table"], kinds, "relative")
    mag = by_kind(sym["table"], kinds, "magnitude")
    loss = sym["loss"]
    row = {
        "alpha": alpha,
        "seed": seed,
        "final_loss": float(loss[-max(1, len(loss) // 10) :].mean()),
        "mean_loss": float(loss.mean()),
        "test_loss": result.test_loss,
        "test_acc": result.test_acc,
    }
    for kind in rel:
        row[f"{kind}_relative"] = float(rel[kind][:, 0].mean())
        row[f"{kind}_magnitude"] = float(mag[kind][:, 0].mean())
    row["relative_deviation"] = sum(float(rel[k][:, 0].mean()) for k in rel) / len(rel)
    return row


def summarize(rows: list[dict]) -> dict:
    """Means over seeds per α (with 95% Student-t intervals over seeds), and the rank
    correlation of deviation with final loss."""
    points: dict[float, list[dict]] = {}
    for row in rows:
        points.setdefault(row["alpha"], []).append(row)
    alphas = sorted(points)

    def mean(key: str) -> list[float]:
        return [sum(r[key] for r in points[a]) / len(points[a]) for a in alphas]

    def ci95(key: str) -> list[list[float]]:
        return [t_interval([r[key] for r in points[a]])["ci95"] for a in alphas]

    dev, fin, mloss = mean("relative_deviation"), mean("final_loss"), mean("mean_loss")
    rank = spearman(dev, fin) if len(alphas) > 2 else float("nan")
    verdict = (
        f"Spearman(deviation, final loss) over α = {rank:.2f} (negative: more breaking, lower "
        f"loss, as the paper finds); final loss SGD {fin[0]:.3g}, Lion {fin[-1]:.3g}, best α "
        f"{alphas[min(range(len(fin)), key=fin.__getitem__)]:g}"
    )
    return {
        "alphas": alphas,
        "relative_deviation": dev,
        "final_loss": fin,
        "mean_loss": mloss,
        "relative_deviation_ci95": ci95("relative_deviation"),
        "final_loss_ci95": ci95("final_loss"),
        "seeds": [len(points[a]) for a in alphas],
        "spearman_deviation_vs_final_loss": rank,
        "verdict": verdict,
    }
