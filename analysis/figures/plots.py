"""Every matplotlib call of the figures: each ``figN`` draws a figure module's data to a PNG.

matplotlib is imported on the first plot, so that the figures' numbers can be computed and
tested where it is not installed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from analysis.figures.fig4 import Fig4Data
from analysis.figures.fig5 import Fig5Data
from analysis.figures.fig7 import Fig7Data
from analysis.figures.fig8 import Fig8Data, update_trace_by_step
from analysis.figures.fig9 import Fig9Data
from analysis.figures.stats import mean_std

COLORS = {"L2O": "tab:red", "SGD": "tab:blue", "Adam": "tab:green", "Lion": "tab:purple"}
_OTHER_COLORS = ("C1", "C5", "C6", "C8", "C9", "gold", "teal", "navy")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or an error that says how to get it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "the figures' PNGs need matplotlib (pip install matplotlib); "
            "their numbers (analysis.figures.figN) do not"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    pyplot().close(fig)
    return path


def color(name: str, i: int) -> str:
    """Fixed colors for the paper's four optimizers; the others cycle through the rest."""
    return COLORS.get(name, _OTHER_COLORS[i % len(_OTHER_COLORS)])


def _style(name: str) -> dict:
    return {} if name in COLORS else {"ls": "--", "lw": 0.8}


def fig4(data: Fig4Data, path: Path) -> Path:
    curves = data.curves
    plt = pyplot()
    panels = sorted({(t, k) for t, k, _ in curves})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for col, (task_name, kind) in enumerate(panels):
        names = [n for t, k, n in curves if (t, k) == (task_name, kind)]
        for i, name in enumerate(names):
            runs = curves[(task_name, kind, name)]
            mag, _ = mean_std([r[0] for r in runs])
            rel, _ = mean_std([r[1] for r in runs])
            steps = torch.arange(mag.shape[0])
            style = {"label": name, "color": color(name, i), **_style(name)}
            axes[0, col].plot(steps, mag.clamp_min(1e-12), **style)
            axes[1, col].plot(steps, rel, **style)
        # the gradient's own deviation (rounding only) along the first optimizer's trajectory
        grad, _ = mean_std([r[2] for r in curves[(task_name, kind, names[0])]])
        axes[0, col].plot(grad.clamp_min(1e-12), ":", color="grey", label="gradient (ref.)")
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(f"{kind} — {task_name}")
        axes[0, col].set_ylabel("|deviation of −Δθ| (paper's sum)")
        axes[1, col].set_ylabel("relative deviation Σ|d_n| / Σ|terms|")
        axes[1, col].set_xlabel("step")
        axes[0, col].legend(fontsize=7)
    return save_png(fig, path)


def fig5(data: Fig5Data, path: Path) -> Path:
    plt = pyplot()
    fig, (ax_l, ax_m, ax_d) = plt.subplots(1, 3, figsize=(15, 4))
    for i, (reg_mul, runs) in enumerate(data.curves.items()):
        loss, std = mean_std([r[0] for r in runs])
        dev, _ = mean_std([r[1] for r in runs])
        mag, _ = mean_std([r[2] for r in runs])
        steps = torch.arange(loss.shape[0])
        label = f"reg_mul={reg_mul:g}"
        ax_l.plot(steps, loss, label=label, color=f"C{i}")
        ax_l.fill_between(steps, loss - std, loss + std, alpha=0.2, color=f"C{i}")
        ax_m.plot(steps, mag.clamp_min(1e-12), label=label, color=f"C{i}")
        ax_d.plot(steps, dev, label=label, color=f"C{i}")
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
    return save_png(fig, path)


def fig7(data: Fig7Data, path: Path) -> Path:
    s = data.summary
    alphas, dev, fin = s["alphas"], s["relative_deviation"], s["final_loss"]
    plt = pyplot()
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
    ax3.set_title(f"Lion–SGD on {data.task_name}")
    return save_png(fig, path)


def fig8(data: Fig8Data, path: Path) -> Path:
    names, agg = data.names, data.per_optimizer
    plt = pyplot()
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
        steps, traces = update_trace_by_step(data.rows, n)
        axes[2].plot(steps, traces, "o-", label=n, color=color(n, i))
    axes[2].set_yscale("log")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("trace of update covariance across minibatches")
    axes[2].legend(fontsize=8)
    return save_png(fig, path)


def fig9(data: Fig9Data, path: Path) -> Path:
    hist_steps, edges = data.hist_steps, data.edges
    plt = pyplot()
    fig, axes = plt.subplots(len(hist_steps), 1, figsize=(7, 1.9 * len(hist_steps)), sharex=True)
    axes = [axes] if len(hist_steps) == 1 else list(axes)
    centers = (edges[:-1] * edges[1:]).sqrt()
    for row, step in enumerate(hist_steps):
        for i, (name, hs) in enumerate(data.hists.items()):
            h = next(h for h in hs if h.step == step)
            axes[row].step(centers, h.density, where="mid", label=name, color=color(name, i))
        axes[row].set_xscale("log")
        axes[row].set_ylabel(f"step {step + 1}")
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("|Δθ|")
    return save_png(fig, path)
