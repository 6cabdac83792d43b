"""Meta-testing: the frozen learned optimizer against baselines at their best grid learning rate.

Everything trains through ``l2o.training.train_optimizee``, so the learned optimizer and Adam see
the same initial weights and the same minibatches for a given seed. Baselines are tuned on the
paper's grid (or the configured one) with the paper's criterion (summed training loss over the
first ``grid_steps`` steps, ``grid_seeds`` runs) on seeds disjoint from the evaluation seeds.
Results: a printed table (mean ± 95% CI over seeds), CSV and JSON, and a PNG of the loss curves
(mean ± std over seeds).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import baselines
import l2o.optimizers as lo
from l2o.data import Dataset
from l2o.tasks import Task
from l2o.training import PAPER_LR_GRID, GridPoint, grid_search_lr, train_optimizee
from meta_train.config import MetaTestConfig


@dataclass
class Curves:
    """One optimizer's meta-test runs: ``train_losses [seeds, steps]`` (NaN after divergence)."""

    name: str
    lr: float | None
    train_losses: torch.Tensor
    test_losses: list[float]
    test_accs: list[float]
    diverged: list[bool]
    grid: list[GridPoint] = field(default_factory=list)


@dataclass
class MetaTestReport:
    task: str
    steps: int
    seeds: list[int]
    curves: list[Curves]
    report_steps: list[int] = field(default_factory=list)  # 1-based steps shown as extra columns


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    t = torch.tensor(values, dtype=torch.float64)
    mean = float(t.mean())
    if n == 1:
        return mean, math.nan
    from scipy.stats import t as student_t

    return mean, float(student_t.ppf(0.975, n - 1) * t.std(unbiased=True) / math.sqrt(n))


def _evaluate(
    task: Task,
    name: str,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    cfg: MetaTestConfig,
    seeds: list[int],
    device: torch.device,
    data: Dataset,
    lr: float | None = None,
    grid: list[GridPoint] | None = None,
) -> Curves:
    losses, test_losses, test_accs, diverged = [], [], [], []
    for seed in seeds:
        result = train_optimizee(task, make_optimizer, cfg.steps, seed, device, data=data)
        losses.append(result.train_losses)
        test_losses.append(result.test_loss)
        test_accs.append(result.test_acc)
        diverged.append(result.diverged)
    return Curves(name, lr, torch.stack(losses), test_losses, test_accs, diverged, grid or [])


def run_meta_test(
    task: Task,
    learned: dict[str, nn.Module],
    cfg: MetaTestConfig,
    device: torch.device | str = "cpu",
    data: Dataset | None = None,
    log: Callable[[str], None] = print,
) -> MetaTestReport:
    """Train fresh optimizees with each learned optimizer (``{name: net}``) and each baseline."""
    device = torch.device(device)
    data = data if data is not None else task.load_data(device)
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    grid_seeds = list(range(cfg.grid_seeds))
    lrs = tuple(cfg.lr_grid) if cfg.lr_grid is not None else PAPER_LR_GRID
    curves = []
    for name, net in learned.items():
        net = net.eval()
        log(f"meta-test: {name} on {len(seeds)} seeds × {cfg.steps} steps")
        with torch.random.fork_rng(devices=[]):
            curves.append(
                _evaluate(
                    task,
                    name,
                    lambda params, net=net: lo.LearnedOptimizer(params, net),
                    cfg,
                    seeds,
                    device,
                    data,
                )
            )
    for name in cfg.baselines:
        best_lr, table = grid_search_lr(
            task,
            lambda params, lr, name=name: baselines.create(name, params, lr=lr),
            lrs=lrs,
            steps=cfg.grid_steps,
            seeds=grid_seeds,
            device=device,
            data=data,
        )
        log(f"meta-test: {name} best lr {best_lr:g} (grid of {len(lrs)}, {len(grid_seeds)} seeds)")
        curves.append(
            _evaluate(
                task,
                name,
                lambda params, name=name, lr=best_lr: baselines.create(name, params, lr=lr),
                cfg,
                seeds,
                device,
                data,
                lr=best_lr,
                grid=table,
            )
        )
    return MetaTestReport(task.name, cfg.steps, seeds, curves, list(cfg.report_steps))


# --------------------------------------------------------------------------------------------
# Summaries and files


def summary_rows(report: MetaTestReport) -> list[dict[str, Any]]:
    """One row per optimizer; statistics over the seeds that did not diverge."""
    rows = []
    for c in report.curves:
        ok = [i for i, d in enumerate(c.diverged) if not d]
        mean_loss, mean_ci = ci95([float(c.train_losses[i].mean()) for i in ok])
        final_loss, final_ci = ci95([float(c.train_losses[i, -1]) for i in ok])
        test_loss, test_ci = ci95([c.test_losses[i] for i in ok])
        test_acc, acc_ci = ci95([c.test_accs[i] for i in ok])
        at_steps = {}
        for k in report.report_steps:
            at_steps[f"loss_at_{k}"], at_steps[f"loss_at_{k}_ci95"] = ci95(
                [float(c.train_losses[i, k - 1]) for i in ok]
            )
        rows.append(
            {
                "optimizer": c.name,
                "lr": c.lr,
                "mean_train_loss": mean_loss,
                "mean_train_loss_ci95": mean_ci,
                "final_train_loss": final_loss,
                "final_train_loss_ci95": final_ci,
                "test_loss": test_loss,
                "test_loss_ci95": test_ci,
                "test_acc": test_acc,
                "test_acc_ci95": acc_ci,
                **at_steps,
                "diverged": len(c.diverged) - len(ok),
                "seeds": len(c.diverged),
            }
        )
    return rows


def format_table(report: MetaTestReport) -> str:
    rows = summary_rows(report)
    header = (
        f"meta-test on {report.task}: {len(report.seeds)} fresh optimizees × {report.steps} steps "
        "(mean ± 95% CI over seeds)"
    )

    def pm(mean: float, ci: float, digits: int = 4) -> str:
        if math.isnan(mean):
            return "—"
        return (
            f"{mean:.{digits}f} ± {ci:.{digits}f}" if not math.isnan(ci) else f"{mean:.{digits}f}"
        )

    ks = report.report_steps
    cols = [
        "optimizer",
        "lr",
        "mean train loss",
        *(f"loss @ {k}" for k in ks),
        f"loss @ {report.steps}",
        "test loss",
        "test acc",
        "div",
    ]
    body = [
        [
            r["optimizer"],
            "learned" if r["lr"] is None else f"{r['lr']:g}",
            pm(r["mean_train_loss"], r["mean_train_loss_ci95"]),
            *(pm(r[f"loss_at_{k}"], r[f"loss_at_{k}_ci95"]) for k in ks),
            pm(r["final_train_loss"], r["final_train_loss_ci95"]),
            pm(r["test_loss"], r["test_loss_ci95"]),
            pm(r["test_acc"], r["test_acc_ci95"], 3),
            f"{r['diverged']}/{r['seeds']}",
        ]
        for r in rows
    ]
    widths = [max(len(cols[i]), *(len(b[i]) for b in body)) for i in range(len(cols))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([header, line(cols), line(["-" * w for w in widths]), *map(line, body)])


def _json_float(value: float | None) -> Any:
    if value is None or math.isfinite(value):
        return value
    return str(value)


def write_report(report: MetaTestReport, out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """``summary.csv``, ``results.json`` (curves, grids, per-seed numbers), ``loss_curves.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(report)
    paths = {"csv": out / "summary.csv", "json": out / "results.json"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    payload = {
        "task": report.task,
        "steps": report.steps,
        "seeds": report.seeds,
        "summary": [
            {k: _json_float(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ],
        "optimizers": {
            c.name: {
                "lr": c.lr,
                "train_losses": [[_json_float(float(v)) for v in run] for run in c.train_losses],
                "test_losses": [_json_float(v) for v in c.test_losses],
                "test_accs": [_json_float(v) for v in c.test_accs],
                "diverged": c.diverged,
                "grid": [
                    {k: _json_float(v) if isinstance(v, float) else v for k, v in asdict(p).items()}
                    for p in c.grid
                ],
            }
            for c in report.curves
        },
    }
    paths["json"].write_text(json.dumps(payload, indent=1))
    if plot:
        paths["png"] = plot_curves(report, out / "loss_curves.png")
    return paths


def plot_curves(report: MetaTestReport, path: str | Path) -> Path:
    """Training-loss curves, mean ± std over the seeds that did not diverge, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = torch.arange(1, report.steps + 1)
    for c in report.curves:
        ok = [i for i, d in enumerate(c.diverged) if not d]
        if not ok:
            continue
        runs = c.train_losses[ok]
        mean, std = runs.mean(0), runs.std(0) if len(ok) > 1 else torch.zeros(runs.shape[1])
        label = c.name if c.lr is None else f"{c.name} (lr {c.lr:g})"
        (line,) = ax.plot(steps, mean, label=label, lw=1.5)
        lower = (mean - std).clamp_min(mean.min() * 0.5)
        ax.fill_between(steps, lower, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{report.task}: mean ± std over {len(report.seeds)} seeds")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
