"""The paper's figures, one subcommand each, writing PNG + CSV of the plotted numbers.

    python analysis/figures.py fig4 --quick --out out/figures  # symmetry breaking along training
    python analysis/figures.py fig5 --quick     # meta-training with the symmetry regularizer
    python analysis/figures.py fig7 --quick     # Lion–SGD interpolation
    python analysis/figures.py fig8 --quick     # tail index and update covariance
    python analysis/figures.py fig9 --quick     # |Δθ| histograms over training
    python analysis/figures.py all --quick

``--quick`` runs in minutes on 2 CPU cores (fewer steps, seeds and probes); without it the
paper's settings are used (hours for fig5). ``--tiny`` is a seconds-long smoke mode for tests.
Each figure also writes ``figN_summary.json``: the numbers that decide whether the paper's finding
is reproduced, and a one-line verdict. The learned optimizer is ``--lopt`` (a pretrained name for
``LearnedOptimizer.from_pretrained`` or a checkpoint path such as a run's ``best.pt``).
Handcrafted baselines run at the best learning rate of the paper's grid search (sum of training
losses over the first steps, on seeds disjoint from the evaluation seeds), cached in
``DIR/lr_cache.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# As a script, Python puts analysis/ first on sys.path; drop it so that module names here cannot
# shadow top-level packages, and fall back to the checkout root when the project isn't installed.
if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
    try:
        import analysis  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import csv
import json
import math
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from analysis.covariance import covariance_stats
from analysis.distributions import histograms_over_training, log_bins
from analysis.heavy_tail import tail_index
from analysis.recording import RecordingPlan, load_recording, record_run
from analysis.symmetry_traces import by_kind
from l2o.tasks import Task, get_task
from l2o.training import PAPER_LR_GRID, grid_search_lr

FIGURES = ("fig4", "fig5", "fig7", "fig8", "fig9")
DEFAULT_LOPT = "lstm-mnist"
EVAL_SEED0 = 100  # evaluation seeds start here; the LR grid search uses seeds 0, 1, 2, ...

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """How much compute a figure may use."""

    name: str
    steps: int  # optimizee steps per run
    seeds: int  # evaluation runs per optimizer
    lr_grid: tuple[float, ...]
    grid_steps: int
    grid_seeds: int
    dataset: str | None  # None: the task's own dataset (full MNIST when present)
    fig4_tasks: tuple[str, ...]
    fig4_extra_baselines: bool  # also every other registered baseline
    fig5_reg_muls: tuple[float, ...]
    fig5_overrides: tuple[str, ...]
    fig7_alphas: tuple[float, ...]
    fig8_probe_steps: tuple[int, ...]
    fig8_probe_batches: int
    fig9_steps: tuple[int, ...]
    extra: dict = field(default_factory=dict)


MODES: dict[str, Mode] = {
    "tiny": Mode(
        name="tiny",
        steps=12,
        seeds=1,
        lr_grid=(1e-2, 1e-1),
        grid_steps=3,
        grid_seeds=1,
        dataset="mnist5k",
        fig4_tasks=("mnist_mlp_relu_bn",),
        fig4_extra_baselines=False,
        fig5_reg_muls=(0.0, 1.0),
        fig5_overrides=(
            "--config=tiny",
            "task.name=mnist_mlp_relu_bn",
        ),
        fig7_alphas=(0.0, 0.5, 1.0),
        fig8_probe_steps=(1, 10),
        fig8_probe_batches=8,
        fig9_steps=(0, 5, 11),
    ),
    "quick": Mode(
        name="quick",
        steps=200,
        seeds=3,
        lr_grid=PAPER_LR_GRID,
        grid_steps=50,
        grid_seeds=2,
        dataset="mnist5k",
        fig4_tasks=("mnist_mlp_relu", "mnist_mlp_relu_bn"),
        fig4_extra_baselines=True,
        fig5_reg_muls=(0.0, 1e-3, 1.0),
        fig5_overrides=(
            "--config=relu_bn",
            "task.dataset=mnist5k",
            "schedule.epochs=1",
            "schedule.runs_per_epoch=8",
            "schedule.horizon=100",
            "unroll.length=20",
            "validation.steps=100",
            "validation.seeds=1",
        ),
        fig7_alphas=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
        fig8_probe_steps=(1, 50, 200),
        fig8_probe_batches=32,
        fig9_steps=(0, 9, 49, 99, 199),
    ),
    "full": Mode(
        name="full",
        steps=500,
        seeds=5,
        lr_grid=PAPER_LR_GRID,
        grid_steps=50,
        grid_seeds=3,
        dataset=None,
        fig4_tasks=("mnist_mlp_relu", "mnist_mlp_relu_bn", "mnist_mlp_relu_2layer", "mnist_conv"),
        fig4_extra_baselines=True,
        fig5_reg_muls=(0.0, 1e-3, 1.0),
        fig5_overrides=("--config=relu_bn",),
        fig7_alphas=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
        fig8_probe_steps=(1, 10, 50, 100, 200, 500),
        fig8_probe_batches=128,
        fig9_steps=(0, 9, 49, 99, 199, 499),
    ),
}


@dataclass
class Context:
    mode: Mode
    out: Path
    lopt: str | None
    device: str = "cpu"
    paper_lrs: bool = False
    lr_cache: dict = field(default_factory=dict)

    def task(self, name: str) -> Task:
        return get_task(name, dataset=self.mode.dataset)

    def seeds(self) -> list[int]:
        return [EVAL_SEED0 + i for i in range(self.mode.seeds)]

    def path(self, name: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out / name


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------


def baseline_factory(name: str, lr: float, **hp) -> OptimizerFactory:
    import baselines

    return lambda params: baselines.create(name, params, lr=lr, **hp)


def lopt_factory(spec: str) -> OptimizerFactory:
    """A learned optimizer from a checkpoint path or a pretrained name."""
    from l2o.optimizers import LearnedOptimizer

    if os.path.exists(spec):
        return lambda params: LearnedOptimizer(params, spec)
    return lambda params: LearnedOptimizer.from_pretrained(spec, params)


def tuned_lr(ctx: Context, task: Task, name: str, **hp) -> float:
    """Best learning rate of ``name`` on ``task`` from the grid search (cached in the out dir)."""
    m = ctx.mode
    parts = (task.name, task.dataset_name, name, json.dumps(hp, sort_keys=True))
    key = "|".join((*parts, str(m.lr_grid), str(m.grid_steps), str(m.grid_seeds)))
    cache_file = ctx.path("lr_cache.json")
    if not ctx.lr_cache and cache_file.exists():
        ctx.lr_cache.update(json.loads(cache_file.read_text()))
    if key not in ctx.lr_cache:
        import baselines

        best, _ = grid_search_lr(
            task,
            lambda params, lr: baselines.create(name, params, lr=lr, **hp),
            lrs=m.lr_grid,
            steps=m.grid_steps,
            seeds=tuple(range(m.grid_seeds)),
            device=ctx.device,
        )
        ctx.lr_cache[key] = best
        _atomic_write_text(cache_file, json.dumps(ctx.lr_cache, indent=1))
    return float(ctx.lr_cache[key])


def optimizers_for(
    ctx: Context, task: Task, names: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, OptimizerFactory]:
    """The L2O (if any) and each baseline at its tuned learning rate. An ``optional`` baseline
    whose every grid learning rate diverges (or that cannot train this task) is left out with a
    warning instead of stopping the figure."""
    out: dict[str, OptimizerFactory] = {}
    if ctx.lopt:
        out["L2O"] = lopt_factory(ctx.lopt)
    for name in names:
        out[_display(name)] = baseline_factory(name, tuned_lr(ctx, task, name))
    for name in optional:
        try:
            out[_display(name)] = baseline_factory(name, tuned_lr(ctx, task, name))
        except (RuntimeError, ValueError) as exc:
            warnings.warn(f"{name} left out on {task.name}: {exc}", stacklevel=2)
    return out


def _display(name: str) -> str:
    return {"sgd": "SGD", "adam": "Adam", "lion": "Lion"}.get(name, name)


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    if not rows:
        raise ValueError(f"nothing to write to {path}")
    fields = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def write_summary(ctx: Context, fig: str, summary: dict) -> Path:
    lopt = ctx.lopt if fig in ("fig4", "fig8", "fig9") else None  # fig5 trains its own
    summary = {"figure": fig, "mode": ctx.mode.name, "lopt": lopt, **summary}
    path = ctx.path(f"{fig}_summary.json")
    _atomic_write_text(path, json.dumps(summary, indent=2, default=float))
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    _plt().close(fig)
    return path


COLORS = {"L2O": "tab:red", "SGD": "tab:blue", "Adam": "tab:green", "Lion": "tab:purple"}


_OTHER_COLORS = ("C1", "C5", "C6", "C8", "C9", "gold", "teal", "navy")


def _color(name: str, i: int) -> str:
    """Fixed colors for the paper's four optimizers; the others cycle through the rest."""
    return COLORS.get(name, _OTHER_COLORS[i % len(_OTHER_COLORS)])


def _style(name: str) -> dict:
    return {} if name in COLORS else {"ls": "--", "lw": 0.8}


def _mean_std(curves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    stacked = torch.stack(curves).double()
    std = stacked.std(0) if stacked.shape[0] > 1 else torch.zeros_like(stacked[0])
    return stacked.mean(0), std


# ---------------------------------------------------------------------------------------------
# Figure 4: symmetry breaking along meta-test trajectories
# ---------------------------------------------------------------------------------------------


def _symmetry_run(ctx, task, name, factory, seed, fig):
    path = ctx.path(f"recordings/{fig}/{task.name}/{name}-seed{seed}.rec")
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = RecordingPlan(symmetry=True)
    result, path = record_run(
        task, factory, ctx.mode.steps, path, plan, seed=seed, device=ctx.device, meta={"opt": name}
    )
    rec = load_recording(path)
    return rec, result


def fig4(ctx: Context) -> dict:
    """Deviations of −Δθ from the rescale / scale / translation constraints, per optimizer."""
    base, extra = ["sgd", "adam", "lion"], []
    if ctx.mode.fig4_extra_baselines:
        import baselines

        extra = [b for b in baselines.available() if b not in base and b not in SKIP_IN_FIG4]
    rows, curves = [], {}
    for task_name in ctx.mode.fig4_tasks:
        task = ctx.task(task_name)
        for name, factory in optimizers_for(ctx, task, base, extra).items():
            for seed in ctx.seeds():
                rec, _ = _symmetry_run(ctx, task, name, factory, seed, "fig4")
                sym = rec.streams["symmetry"]
                kinds = rec.meta["structures"]["kinds"]
                mags = by_kind(sym["table"], kinds, "magnitude")
                rels = by_kind(sym["table"], kinds, "relative")
                loss = sym["loss"]
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
    write_csv(ctx.path("fig4.csv"), rows)
    _plot_fig4(ctx, curves)
    return write_summary(ctx, "fig4", _summarize_fig4(curves, ctx.mode.steps))


# lion_sgd is figure 7's subject; adamw equals adam without weight decay
SKIP_IN_FIG4 = ("lion_sgd", "adamw")


def _plot_fig4(ctx, curves) -> None:
    plt = _plt()
    panels = sorted({(t, k) for t, k, _ in curves})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for col, (task_name, kind) in enumerate(panels):
        names = [n for t, k, n in curves if (t, k) == (task_name, kind)]
        for i, name in enumerate(names):
            runs = curves[(task_name, kind, name)]
            mag, _ = _mean_std([r[0] for r in runs])
            rel, _ = _mean_std([r[1] for r in runs])
            steps = torch.arange(mag.shape[0])
            style = {"label": name, "color": _color(name, i), **_style(name)}
            axes[0, col].plot(steps, mag.clamp_min(1e-12), **style)
            axes[1, col].plot(steps, rel, **style)
        # the gradient's own deviation (rounding only) along the first optimizer's trajectory
        grad, _ = _mean_std([r[2] for r in curves[(task_name, kind, names[0])]])
        axes[0, col].plot(grad.clamp_min(1e-12), ":", color="grey", label="gradient (ref.)")
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(f"{kind} — {task_name}")
        axes[0, col].set_ylabel("|deviation of −Δθ| (paper's sum)")
        axes[1, col].set_ylabel("relative deviation Σ|d_n| / Σ|terms|")
        axes[1, col].set_xlabel("step")
        axes[0, col].legend(fontsize=7)
    save_png(fig, ctx.path("fig4.png"))


def _window_mean(x: torch.Tensor, lo: int, hi: int) -> float:
    seg = x[lo:hi]
    return float(seg.double().mean()) if seg.numel() else float("nan")


def _smooth(v: torch.Tensor, k: int = 5) -> torch.Tensor:
    kernel = torch.ones(1, 1, k, dtype=torch.float64) / k
    return torch.conv1d(v.double().view(1, 1, -1), kernel).view(-1)


def _summarize_fig4(curves, steps: int) -> dict:
    early = max(1, steps // 10)
    table = {}
    for (task_name, kind, name), runs in curves.items():
        mag, _ = _mean_std([r[0] for r in runs])
        rel, _ = _mean_std([r[1] for r in runs])
        loss, _ = _mean_std([r[3] for r in runs])
        entry = {
            "mean_magnitude": float(mag.mean()),
            "mean_relative": float(rel.mean()),
            "relative_first_10pct": _window_mean(rel, 0, early),
            "relative_rest": _window_mean(rel, early, steps),
            "loss_first_10pct": _window_mean(loss, 0, early),
            "final_loss": float(loss[-10:].mean()),
        }
        if mag.shape[0] > 100:
            entry["magnitude_at_step_100"] = float(mag[100])
        # does the deviation come with the fast loss decrease? correlation of the per-step
        # deviation with the per-step loss drop (both smoothed over 5 steps)
        drop = -(loss[1:] - loss[:-1])
        if drop.numel() > 10:
            d, r = _smooth(drop), _smooth(mag[:-1])
            entry["corr_deviation_vs_loss_drop"] = float(torch.corrcoef(torch.stack([d, r]))[0, 1])
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
    return {"per_curve": table, "verdict": verdict}


# ---------------------------------------------------------------------------------------------
# Figure 5: meta-training with the symmetry regularizer at several strengths
# ---------------------------------------------------------------------------------------------


def _run_py() -> list[str]:
    script = Path(__file__).resolve().parent.parent / "meta_train" / "run.py"
    return (
        [sys.executable, str(script)]
        if script.exists()
        else [sys.executable, "-m", "meta_train.run"]
    )


def meta_train_with_regularization(ctx: Context, reg_mul: float) -> Path:
    """Meta-train through the CLI (analysis never imports meta_train); returns ``best.pt``."""
    run_dir = ctx.path(f"fig5_runs/reg_mul={reg_mul:g}")
    best = run_dir / "best.pt"
    if best.exists():
        return best
    kind = "symmetry" if reg_mul > 0 else "none"
    args = [
        *_run_py(),
        *ctx.mode.fig5_overrides,
        f"--run-dir={run_dir}",
        f"regularization.kind={kind}",
        "meta_test.enabled=false",  # this figure meta-tests the result itself, below
        "wandb.mode=disabled",
        "logging.progress=false",
    ]
    if reg_mul > 0:
        args.append(f"regularization.reg_mul={reg_mul}")
    if ctx.mode.dataset and not any(a.startswith("task.dataset=") for a in args):
        args.append(f"task.dataset={ctx.mode.dataset}")
    log = run_dir.parent / f"reg_mul={reg_mul:g}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not best.exists():
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"meta-training failed ({' '.join(args)}), log {log}:\n{tail}")
    return best


def fig5(ctx: Context) -> dict:
    """Meta-test loss (and symmetry breaking) of L2Os meta-trained with reg_mul ∈ {0, …}."""
    rows, curves = [], {}
    task = None
    for reg_mul in ctx.mode.fig5_reg_muls:
        best = meta_train_with_regularization(ctx, reg_mul)
        task_name = _run_task(best.parent)
        task = ctx.task(task_name)
        for seed in ctx.seeds():
            rec, result = _symmetry_run(
                ctx, task, f"reg{reg_mul:g}", lopt_factory(str(best)), seed, "fig5"
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
    write_csv(ctx.path("fig5.csv"), rows)
    plt = _plt()
    fig, (ax_l, ax_m, ax_d) = plt.subplots(1, 3, figsize=(15, 4))
    summary = {}
    for i, (reg_mul, runs) in enumerate(curves.items()):
        loss, std = _mean_std([r[0] for r in runs])
        dev, _ = _mean_std([r[1] for r in runs])
        mag, _ = _mean_std([r[2] for r in runs])
        steps = torch.arange(loss.shape[0])
        ax_l.plot(steps, loss, label=f"reg_mul={reg_mul:g}", color=f"C{i}")
        ax_l.fill_between(steps, loss - std, loss + std, alpha=0.2, color=f"C{i}")
        ax_m.plot(steps, mag.clamp_min(1e-12), label=f"reg_mul={reg_mul:g}", color=f"C{i}")
        ax_d.plot(steps, dev, label=f"reg_mul={reg_mul:g}", color=f"C{i}")
        summary[f"{reg_mul:g}"] = {
            "final_loss": float(loss[-10:].mean()),
            "mean_loss": float(loss.mean()),
            "mean_magnitude_deviation": float(mag.mean()),
            "mean_relative_deviation": float(dev.mean()),
        }
    ax_l.set_yscale("log")
    ax_l.set_xlabel("meta-test step")
    ax_l.set_ylabel("training loss")
    ax_l.legend()
    ax_m.set_yscale("log")
    ax_m.set_xlabel("meta-test step")
    ax_m.set_ylabel("summed |deviation| of −Δθ (what the regularizer penalizes)")
    ax_m.legend()
    ax_d.set_xlabel("meta-test step")
    ax_d.set_ylabel("relative symmetry deviation (mean over kinds)")
    ax_d.legend()
    save_png(fig, ctx.path("fig5.png"))
    keys = [f"{r:g}" for r in ctx.mode.fig5_reg_muls]
    unreg, strongest = summary[keys[0]], summary[keys[-1]]
    verdict = (
        f"task {task.name if task else '?'}: final loss reg_mul=0 {unreg['final_loss']:.3g} vs "
        f"reg_mul={keys[-1]} {strongest['final_loss']:.3g}; deviation "
        f"magnitude {unreg['mean_magnitude_deviation']:.3g} → "
        f"{strongest['mean_magnitude_deviation']:.3g}, relative "
        f"{unreg['mean_relative_deviation']:.3g} → {strongest['mean_relative_deviation']:.3g}. "
        f"Regularization hurts: {strongest['final_loss'] > unreg['final_loss']}"
    )
    return write_summary(ctx, "fig5", {"per_reg_mul": summary, "verdict": verdict})


def _run_task(run_dir: Path) -> str:
    """The task a meta-training run used, from its ``config.yaml``."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return cfg["task"]["name"]


# ---------------------------------------------------------------------------------------------
# Figure 7: Lion–SGD interpolation
# ---------------------------------------------------------------------------------------------

FIG7_TASK = "mnist_mlp_relu"
FIG7_MOMENTUM = 0.9  # the paper's SGD part: SGD with momentum 0.9
FIG7_PAPER_LRS = (0.5, 0.005)  # (SGD, Lion) learning rates of the paper's interpolation runs


def fig7(ctx: Context) -> dict:
    """Update = α·Δθ_Lion + (1−α)·Δθ_SGD: symmetry breaking vs final loss over α.

    Each part runs at its own best learning rate (grid search of pure Lion and of pure SGD with
    momentum 0.9, the paper's SGD part), so α = 0 and α = 1 are the tuned SGD and Lion;
    ``--paper-lrs`` uses the paper's fixed lr 0.5 (SGD) and 0.005 (Lion) instead.
    """
    task = ctx.task(FIG7_TASK)
    if ctx.paper_lrs:
        lr_sgd, lr_lion = FIG7_PAPER_LRS
    else:
        lr_sgd = tuned_lr(ctx, task, "sgd", momentum=FIG7_MOMENTUM)
        lr_lion = tuned_lr(ctx, task, "lion")
    rows, points = [], {}
    for alpha in ctx.mode.fig7_alphas:
        factory = _lion_sgd_factory(alpha, lr_lion, lr_sgd)
        for seed in ctx.seeds():
            rec, result = _symmetry_run(ctx, task, f"alpha{alpha:g}", factory, seed, "fig7")
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
            rows.append(row)
            points.setdefault(alpha, []).append(row)
    write_csv(ctx.path("fig7.csv"), rows)
    alphas = sorted(points)
    mean = lambda key: [sum(r[key] for r in points[a]) / len(points[a]) for a in alphas]
    dev, fin, mloss = mean("relative_deviation"), mean("final_loss"), mean("mean_loss")
    plt = _plt()
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(alphas, dev, "o-", color="tab:purple", label="relative deviation")
    ax1.set_xlabel("α (0 = SGD, 1 = Lion)")
    ax1.set_ylabel("symmetry breaking (relative)", color="tab:purple")
    ax2 = ax1.twinx()
    ax2.plot(alphas, fin, "s--", color="tab:blue", label="final train loss")
    ax2.set_ylabel("final training loss", color="tab:blue")
    ax3.scatter(dev, fin, c=alphas, cmap="viridis")
    for a, x, y in zip(alphas, dev, fin, strict=True):
        ax3.annotate(f"{a:g}", (x, y), fontsize=8)
    ax3.set_xlabel("symmetry breaking (relative)")
    ax3.set_ylabel("final training loss")
    ax3.set_title(f"Lion–SGD on {task.name}")
    save_png(fig, ctx.path("fig7.png"))
    rank = _spearman(dev, fin) if len(alphas) > 2 else float("nan")
    verdict = (
        f"Spearman(deviation, final loss) over α = {rank:.2f} (negative: more breaking, lower "
        f"loss, as the paper finds); final loss SGD {fin[0]:.3g}, Lion {fin[-1]:.3g}, best α "
        f"{alphas[min(range(len(fin)), key=fin.__getitem__)]:g}"
    )
    summary = {
        "learning_rates": "paper" if ctx.paper_lrs else "tuned",
        "lr_sgd": lr_sgd,
        "lr_lion": lr_lion,
        "alphas": alphas,
        "relative_deviation": dev,
        "final_loss": fin,
        "mean_loss": mloss,
        "spearman_deviation_vs_final_loss": rank,
        "verdict": verdict,
    }
    return write_summary(ctx, "fig7", summary)


def _lion_sgd_factory(alpha: float, lr_lion: float, lr_sgd: float) -> OptimizerFactory:
    import baselines

    return lambda params: baselines.create(
        "lion_sgd", params, alpha=alpha, lr=lr_lion, sgd_lr=lr_sgd, momentum=FIG7_MOMENTUM
    )


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra = torch.tensor(a, dtype=torch.float64).argsort().argsort().double()
    rb = torch.tensor(b, dtype=torch.float64).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


# ---------------------------------------------------------------------------------------------
# Figure 8: heavy tails of gradient vs update noise, and update covariance
# ---------------------------------------------------------------------------------------------

NOISE_TASK = "mnist_mlp_sigmoid"


def fig8(ctx: Context) -> dict:
    """α of the gradient and update noise across minibatches at the same state, and covariance."""
    task = ctx.task(NOISE_TASK)
    m = ctx.mode
    steps = max(m.fig8_probe_steps)
    rows = []
    for name, factory in optimizers_for(ctx, task, ["sgd", "adam", "lion"]).items():
        for seed in ctx.seeds():
            path = ctx.path(f"recordings/fig8/{name}-seed{seed}.rec")
            path.parent.mkdir(parents=True, exist_ok=True)
            plan = RecordingPlan(
                probe_steps=m.fig8_probe_steps, probe_batches=m.fig8_probe_batches, symmetry=False
            )
            _, path = record_run(task, factory, steps, path, plan, seed=seed, device=ctx.device)
            probe = load_recording(path).streams["probe"]
            for i, step in enumerate(probe["steps"].tolist()):
                g, u = probe["grads"][i], probe["updates"][i]
                row = {"optimizer": name, "seed": seed, "step": step}
                for label, x in (("grad", g), ("update", u)):
                    row[f"alpha_{label}_pooled"] = tail_index(x).alpha
                    row[f"alpha_{label}_standardized"] = tail_index(x, standardize=True).alpha
                    cov = covariance_stats(x, k=3)
                    row[f"cov_trace_{label}"] = cov.trace
                    row[f"cov_top_{label}"] = float(cov.top_eigenvalues[0])
                    mean_sq = float(x.double().mean(0).pow(2).sum())
                    # trace relative to the mean's energy: variability of the direction itself
                    row[f"cov_trace_rel_{label}"] = cov.trace / mean_sq if mean_sq > 0 else math.inf
                rows.append(row)
    write_csv(ctx.path("fig8.csv"), rows)
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    # means over seeds and probe steps, of the defined values (α is NaN for discrete noise)
    agg = {
        n: {
            k: _finite_mean([r[k] for r in rows if r["optimizer"] == n])
            for k in rows[0]
            if k.startswith(("alpha", "cov"))
        }
        for n in names
    }
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    x = torch.arange(len(names)).double()
    for j, (col, lab) in enumerate(
        (("pooled", "paper's pooling"), ("standardized", "standardized"))
    ):
        ax = axes[j]
        ax.bar(x - 0.2, [agg[n][f"alpha_grad_{col}"] for n in names], 0.4, label="gradient noise")
        ax.bar(x + 0.2, [agg[n][f"alpha_update_{col}"] for n in names], 0.4, label="update noise")
        ax.set_xticks(x.tolist(), names)
        ax.set_ylabel(f"tail index α ({lab})")
        ax.axhline(2.0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    for i, n in enumerate(names):
        sub = [r for r in rows if r["optimizer"] == n]
        by_step = {}
        for r in sub:
            by_step.setdefault(r["step"], []).append(r["cov_trace_update"])
        s = sorted(by_step)
        axes[2].plot(
            s, [sum(by_step[t]) / len(by_step[t]) for t in s], "o-", label=n, color=_color(n, i)
        )
    axes[2].set_yscale("log")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("trace of update covariance across minibatches")
    axes[2].legend(fontsize=8)
    save_png(fig, ctx.path("fig8.png"))
    verdict = []
    if "L2O" in agg:
        a = agg["L2O"]
        others = [n for n in names if n != "L2O"]
        verdict.append(
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
            verdict.append(
                f"{label}: "
                + ", ".join(f"{n} {agg[n][key]:.3g}" for n in names)
                + f"; L2O largest: {largest}"
            )
    return write_summary(ctx, "fig8", {"per_optimizer": agg, "verdict": verdict})


# ---------------------------------------------------------------------------------------------
# Figure 9: histograms of |Δθ| over training
# ---------------------------------------------------------------------------------------------


def fig9(ctx: Context) -> dict:
    """|Δθ| histograms at several steps for the L2O, Adam and SGD."""
    task = ctx.task(NOISE_TASK)
    hist_steps = ctx.mode.fig9_steps
    steps = max(hist_steps) + 1
    edges = log_bins(1e-9, 1e1, 60)
    rows, hists = [], {}
    for name, factory in optimizers_for(ctx, task, ["sgd", "adam"]).items():
        seed = ctx.seeds()[0]
        path = ctx.path(f"recordings/fig9/{name}-seed{seed}.rec")
        path.parent.mkdir(parents=True, exist_ok=True)
        plan = RecordingPlan(trajectory_steps=hist_steps, symmetry=False)
        _, path = record_run(task, factory, steps, path, plan, seed=seed, device=ctx.device)
        traj = load_recording(path).streams["trajectory"]
        hists[name] = histograms_over_training(traj["steps"], traj["updates"], edges)
        for h in hists[name]:
            for b in range(len(h.density)):
                rows.append(
                    {
                        "optimizer": name,
                        "step": h.step,
                        "bin_low": float(edges[b]),
                        "bin_high": float(edges[b + 1]),
                        "fraction": float(h.density[b]),
                        "fraction_zero": h.zeros,
                        "median_abs_update": h.median,
                    }
                )
    write_csv(ctx.path("fig9.csv"), rows)
    plt = _plt()
    fig, axes = plt.subplots(len(hist_steps), 1, figsize=(7, 1.9 * len(hist_steps)), sharex=True)
    axes = [axes] if len(hist_steps) == 1 else list(axes)
    centers = (edges[:-1] * edges[1:]).sqrt()
    for row, step in enumerate(hist_steps):
        for i, (name, hs) in enumerate(hists.items()):
            h = next(h for h in hs if h.step == step)
            axes[row].step(centers, h.density, where="mid", label=name, color=_color(name, i))
        axes[row].set_xscale("log")
        axes[row].set_ylabel(f"step {step + 1}")
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("|Δθ|")
    save_png(fig, ctx.path("fig9.png"))
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
    return write_summary(ctx, "fig9", {"median_abs_update": medians, "verdict": verdict})


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

RUNNERS = {"fig4": fig4, "fig5": fig5, "fig7": fig7, "fig8": fig8, "fig9": fig9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python analysis/figures.py",
        description="Reproduce the paper's figures (PNG + CSV + summary JSON per figure).",
    )
    parser.add_argument("figure", choices=[*FIGURES, "all"])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="minutes on 2 CPU cores")
    size.add_argument("--tiny", action="store_true", help="seconds: a smoke test of the pipeline")
    parser.add_argument("--out", default="out/figures", help="output folder (default out/figures)")
    parser.add_argument(
        "--lopt",
        default=DEFAULT_LOPT,
        help=f"learned optimizer: pretrained name or checkpoint path (default {DEFAULT_LOPT}); "
        "'none' leaves it out",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=None, help="override the mode's seed count")
    parser.add_argument(
        "--paper-lrs",
        action="store_true",
        help="fig7: the paper's fixed learning rates (SGD 0.5, Lion 0.005) instead of tuned ones",
    )
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error("--seeds must be ≥ 1")
        mode = _replace(mode, seeds=args.seeds)
    lopt = None if args.lopt.lower() == "none" else args.lopt
    ctx = Context(mode, Path(args.out), lopt, args.device, paper_lrs=args.paper_lrs)
    figures = FIGURES if args.figure == "all" else (args.figure,)
    for fig in figures:
        start = time.perf_counter()
        summary_path = RUNNERS[fig](ctx)
        summary = json.loads(Path(summary_path).read_text())
        print(f"{fig}: {time.perf_counter() - start:.0f} s → {ctx.out}/{fig}.png, {fig}.csv")
        verdict = summary.get("verdict")
        for line in verdict if isinstance(verdict, list) else [verdict]:
            if line:
                print(f"  {line}")
    return 0


def _replace(mode: Mode, **changes) -> Mode:
    import dataclasses

    return dataclasses.replace(mode, **changes)


if __name__ == "__main__":
    raise SystemExit(main())
