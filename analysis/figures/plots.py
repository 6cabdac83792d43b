"""Every figure's drawing: ``figN(files, path)`` draws figure N from its files to a PNG.

The plots read only what a figure writes (``analysis.figures.tables.FigureFiles``: its CSV,
summary and the learning-rate cache), so a run and ``python analysis/figures.py redraw`` draw
the same picture from the same numbers. matplotlib is imported on the first plot
(``plot_style.pyplot``), so the numbers never need it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from analysis.figures import fig7 as fig7_numbers
from analysis.figures.bands import finite_band, wants_log
from analysis.figures.plot_style import (
    Palette,
    draw_bands,
    label,
    new_figure,
    pyplot,
    save_png,
    title,
)
from analysis.figures.tables import FigureFiles, group, seed_matrix, unique

__all__ = ["fig4", "fig5", "fig7", "fig8", "fig9", "pyplot"]

GRADIENT = "gradient"  # figure 4's reference curve
GRADIENT_STYLE = {"color": "grey", "ls": ":", "lw": 1.0}


def seeds_text(n: int, what: str = "shaded") -> str:
    """How many seeds a curve averages, and what its band is."""
    if n < 2:
        return "one seed"
    return f"mean of {n} seeds ({what}: 95% CI; geometric mean on log axes)"


def lopt_text(files: FigureFiles, names: list[str]) -> str:
    """Which checkpoint ``L2O`` is, for the title (baselines' learning rates are in legends)."""
    return f"; L2O = --lopt {files.lopt}" if "L2O" in names and files.lopt else ""


def where(files: FigureFiles, tasks: list[str]) -> str:
    """``task on dataset`` for the title (no task: the run folder it was read from is gone)."""
    if not tasks:
        return "task unknown (its run folder is gone)"
    datasets = sorted({files.dataset(t) for t in tasks})
    return f"{', '.join(tasks)} on {', '.join(datasets)}"


def curve(rows: list[dict], y: str, x: str = "step") -> tuple[list[float], torch.Tensor]:
    """``y`` over ``x``, one matrix row per seed (``draw_bands`` averages them)."""
    return seed_matrix(rows, x, y)


def legend_beside(ax, source_ax, heading: str) -> None:
    """``source_ax``'s legend, drawn in the otherwise empty axes ``ax``."""
    handles, labels = source_ax.get_legend_handles_labels()
    ax.axis("off")
    many = len(labels) > 11
    ax.legend(
        handles,
        labels,
        loc="center",
        title=heading,
        frameon=False,
        ncols=2 if many else 1,
        fontsize=6.5 if many else 8,
    )


def fig4(files: FigureFiles, path: Path) -> Path:
    rows = files.rows
    tasks, kinds, names = unique(rows, "task"), unique(rows, "kind"), unique(rows, "optimizer")
    palette = Palette(names)
    styles = {n: palette.style(n) for n in names} | {GRADIENT: GRADIENT_STYLE}
    shaded = palette.shaded(names)
    runs = group(rows, "task", "kind", "optimizer")
    cols = 1 + len(kinds)
    fig, axes = new_figure(2 * len(tasks), cols, (2.75 * cols, 4.6 * len(tasks) + 0.9))
    for i, task in enumerate(tasks):
        labels = {n: label(n, files.tuned_lr(task, n)) for n in names}
        labels[GRADIENT] = "gradient itself (float rounding)"
        task_kinds = [k for k in kinds if any((task, k, n) in runs for n in names)]
        present = [n for n in names if (task, task_kinds[0], n) in runs]
        loss_ax = axes[2 * i, 0]
        draw_bands(
            loss_ax,
            {n: curve(runs[(task, task_kinds[0], n)], "loss") for n in present},
            styles,
            labels,
            shaded,
        )
        loss_ax.set(title=f"{task}: training loss", xlabel="training step")
        loss_ax.set_ylabel("loss (cross-entropy, nats)")
        for k, kind in enumerate(kinds):
            mag_ax, rel_ax = axes[2 * i, 1 + k], axes[2 * i + 1, 1 + k]
            here = [n for n in names if (task, kind, n) in runs]
            if not here:
                mag_ax.axis("off")
                rel_ax.axis("off")
                mag_ax.text(0.5, 0.5, f"{task} has no {kind} structure", ha="center")
                continue
            mags = {n: curve(runs[(task, kind, n)], "update_magnitude") for n in here}
            # the gradient's own deviation (rounding only) along the first optimizer's run
            mags[GRADIENT] = curve(runs[(task, kind, here[0])], "gradient_magnitude")
            draw_bands(mag_ax, mags, styles, labels, shaded)
            rels = {n: curve(runs[(task, kind, n)], "update_relative") for n in here}
            draw_bands(rel_ax, rels, styles, labels, shaded)
            mag_ax.set_title(f"{kind}: size of the deviation")
            rel_ax.set_title(f"{kind}: relative deviation")
            rel_ax.set_xlabel("training step")
            if k == 0:
                mag_ax.set_ylabel("summed |deviation| of −Δθ\n(parameter units)")
                rel_ax.set_ylabel("Σ|deviation| / Σ|terms|\n(dimensionless)")
                legend_beside(axes[2 * i + 1, 0], mag_ax, f"{task}\n(baselines: tuned lr)")
    steps = int(max(r["step"] for r in rows)) + 1
    title(
        fig,
        "Figure 4 — symmetry breaking along training: how far each optimizer's update −Δθ is "
        "from the gradient's rescale, scale and translation constraints",
        f"{where(files, tasks)}; {steps} steps; {seeds_text(len(files.seeds()))}; "
        f"baselines at their tuned learning rate{lopt_text(files, names)}",
    )
    return save_png(fig, path)


def fig5(files: FigureFiles, path: Path) -> Path:
    rows = files.rows
    reg_muls = unique(rows, "reg_mul")
    cmap = pyplot().get_cmap("plasma")
    styles, labels = {}, {}
    for i, reg_mul in enumerate(reg_muls):
        shade = 0.0 if len(reg_muls) == 1 else i / (len(reg_muls) - 1)
        color = "black" if reg_mul == 0 else cmap(0.15 + 0.65 * shade)
        styles[reg_mul] = {"color": color, "ls": "-", "lw": 1.5}
        test = [
            r["test_loss"]
            for r in rows
            if r["reg_mul"] == reg_mul and isinstance(r.get("test_loss"), float)
        ]
        test_text = f", test loss {sum(test) / len(test):.3g}" if test else ""
        none = " (none)" if reg_mul == 0 else ""
        labels[reg_mul] = f"reg_mul = {reg_mul:g}{none}{test_text}"
    by_reg = group(rows, "reg_mul")
    fig, axes = new_figure(1, 3, (11.5, 4.0))
    panels = (
        ("loss", "training loss", "loss (cross-entropy, nats)"),
        (
            "magnitude_deviation",
            "what the regularizer penalizes",
            "summed |deviation| of −Δθ over the\nconstraints (parameter units)",
        ),
        (
            "relative_deviation",
            "relative symmetry breaking",
            "relative deviation, mean over\nconstraints (dimensionless)",
        ),
    )
    for ax, (column, heading, ylabel) in zip(axes[0], panels):
        curves = {r: curve(by_reg[(r,)], column) for r in reg_muls}
        draw_bands(ax, curves, styles, labels, set(reg_muls))
        ax.set(title=heading, xlabel="meta-test training step", ylabel=ylabel)
    axes[0, 0].legend(title="meta-trained with")
    steps = int(max(r["step"] for r in rows)) + 1
    title(
        fig,
        "Figure 5 — learned optimizers meta-trained with the symmetry regularizer at several "
        "strengths, then meta-tested",
        f"{where(files, [files.task] if files.task else [])}; {steps} steps; "
        f"{seeds_text(len(files.seeds()))}",
    )
    return save_png(fig, path)


def errorbars(ax, xs, samples: list[list[float]], **style) -> list[float]:
    """At each x, the mean of its samples (seeds) with its 95% interval as error bars (none
    for a single seed); geometric on a log axis (``draw_bands``' rule). Returns the means."""
    log = wants_log(v for values in samples for v in values)
    bands = [finite_band(values, log) for values in samples]
    means = [float(b.mean) for b in bands]
    yerr = None
    if all(b.lo is not None for b in bands):
        yerr = [[m - float(b.lo) for m, b in zip(means, bands)]]
        yerr.append([float(b.hi) - m for m, b in zip(means, bands)])
    ax.errorbar(xs, means, yerr=yerr, capsize=3, **style)
    if log:
        ax.set_yscale("log")
    return means


def fig7(files: FigureFiles, path: Path) -> Path:
    s = files.summary
    by_alpha = group(files.rows, "alpha")
    alphas = sorted(a for (a,) in by_alpha)

    def samples(column: str) -> list[list[float]]:
        return [[r[column] for r in by_alpha[(a,)]] for a in alphas]

    fig, axes = new_figure(1, 3, (11.5, 3.9))
    ax_dev, ax_loss, ax_both = axes[0]
    dev_means = errorbars(ax_dev, alphas, samples("relative_deviation"), fmt="o-", color="purple")
    ax_dev.set(title="symmetry breaking", xlabel="α (0 = SGD, 1 = Lion)")
    ax_dev.set_ylabel("relative deviation, mean over\nconstraints and steps (dimensionless)")
    final_means = errorbars(
        ax_loss, alphas, samples("final_loss"), fmt="o-", color="black", label="training"
    )
    errorbars(ax_loss, alphas, samples("test_loss"), fmt="s--", color="grey", label="test set")
    ax_loss.set(title="loss", xlabel="α (0 = SGD, 1 = Lion)", ylabel="loss (cross-entropy, nats)")
    ax_loss.legend(title="final loss (training: last 10% of steps)", fontsize=7, title_fontsize=7)
    ax_both.scatter(dev_means, final_means, c=alphas, cmap="viridis", zorder=3)
    for a, x, y in zip(alphas, dev_means, final_means):
        ax_both.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    rank = s["spearman_deviation_vs_final_loss"]
    rank_text = f"{rank:.2f}" if isinstance(rank, (int, float)) and math.isfinite(rank) else "n/a"
    ax_both.set(
        title=f"breaking vs loss (Spearman {rank_text})",
        xlabel="relative deviation (dimensionless)",
        ylabel="final training loss (nats)",
    )
    chosen = "tuned" if s["learning_rates"] == "tuned" else "the paper's"
    title(
        fig,
        "Figure 7 — Lion–SGD interpolation, update α·Δθ_Lion + (1−α)·Δθ_SGD: does more "
        "symmetry breaking go with lower loss?",
        f"{where(files, [files.task])}; {files.settings.get('steps', '?')} steps; "
        f"{seeds_text(len(files.seeds()), 'bars')}; SGD part (momentum {fig7_numbers.MOMENTUM:g}) "
        f"lr {s['lr_sgd']:.3g}, Lion part lr {s['lr_lion']:.3g} ({chosen} learning rates)",
    )
    return save_png(fig, path)


def seed_means(rows: list[dict], column: str) -> list[float]:
    """Per seed, the mean of ``column``'s finite values over the probes (NaN if none is)."""
    by_seed = group(rows, "seed")
    return [float(finite_band([r[column] for r in runs]).mean) for runs in by_seed.values()]


def tail_bars(ax, names, by_name, pooling: str, styles) -> None:
    """Tail index of gradient (hatched) and update (solid) noise per optimizer: the mean over
    seeds of each seed's mean over the probes, with its 95% CI over seeds; an undefined α
    (discrete noise, e.g. Lion's ±lr updates) is marked n/a."""
    x = torch.arange(len(names)).double()
    for offset, source, fill in ((-0.2, "grad", False), (0.2, "update", True)):
        for i, n in enumerate(names):
            band = finite_band(seed_means(by_name[(n,)], f"alpha_{source}_{pooling}"))
            xi = float(x[i]) + offset
            if not math.isfinite(float(band.mean)):
                ax.text(
                    xi, 0.03, "no α", transform=ax.get_xaxis_transform(), ha="center", fontsize=7
                )
                continue
            color = styles[n]["color"]
            ax.bar(
                xi,
                float(band.mean),
                0.38,
                color=color if fill else "white",
                edgecolor=color,
                hatch=None if fill else "////",
            )
            if band.lo is not None:
                err = [[float(band.mean - band.lo)], [float(band.hi - band.mean)]]
                ax.errorbar(xi, float(band.mean), yerr=err, color="black", capsize=2, lw=0.8)
    ax.axhline(2.0, color="grey", lw=0.8, ls="--")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xticks(x.tolist(), names, rotation=30 if len(names) > 5 else 0)
    ax.set_ylabel("tail index α (dimensionless;\n2 = Gaussian, lower = heavier tail)")


def fig8(files: FigureFiles, path: Path) -> Path:
    rows = files.rows
    names = unique(rows, "optimizer")
    palette = Palette(names)
    styles = {n: palette.style(n) | {"marker": "o", "ms": 3} for n in names}
    labels = {n: label(n, files.tuned_lr(files.task, n)) for n in names}
    by_name = group(rows, "optimizer")
    fig, axes = new_figure(2, 2, (11.0, 7.6))
    for ax, pooling, heading in (
        (axes[0, 0], "pooled", "tail index, coordinates pooled (the paper's)"),
        (axes[0, 1], "standardized", "tail index, each coordinate standardized"),
    ):
        tail_bars(ax, names, by_name, pooling, styles)
        ax.set_title(heading)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    axes[0, 0].legend(
        handles=[
            Patch(facecolor="white", edgecolor="black", hatch="////", label="gradient noise"),
            Patch(facecolor="grey", edgecolor="grey", label="update noise"),
            Line2D([], [], color="grey", ls="--", label="Gaussian (α = 2)"),
        ],
        fontsize=7,
    )
    for ax, column, heading, ylabel in (
        (
            axes[1, 0],
            "cov_trace_update",
            "spread of the update across minibatches",
            "trace of the update covariance\n(parameter units²)",
        ),
        (
            axes[1, 1],
            "cov_trace_rel_update",
            "spread relative to the mean update",
            "covariance trace / ‖mean update‖²\n(dimensionless)",
        ),
    ):
        curves = {n: curve(by_name[(n,)], column) for n in names}
        draw_bands(ax, curves, styles, labels, palette.shaded(names))
        ax.set(title=heading, xlabel="training step of the probe", ylabel=ylabel)
        if wants_log(unique(rows, "step")):
            ax.set_xscale("log")
    axes[1, 0].legend(title="baselines: tuned lr")
    probes = ", ".join(f"{s:g}" for s in sorted(unique(rows, "step")))
    batches = files.settings.get("probe_batches")
    batches_text = f", {batches} minibatches each" if batches else ""
    title(
        fig,
        "Figure 8 — gradient noise vs update noise across minibatches at the same parameters: "
        "heavy tails and spread",
        f"{where(files, [files.task])}; probes at steps {probes}{batches_text}; "
        f"{seeds_text(len(files.seeds()), 'bands and error bars')}; bars: mean over the probes; "
        f"no α: discrete noise{lopt_text(files, names)}",
    )
    return save_png(fig, path)


def fig9(files: FigureFiles, path: Path) -> Path:
    rows = files.rows
    names, steps = unique(rows, "optimizer"), sorted(unique(rows, "step"))
    palette = Palette(names)
    hists = group(rows, "step", "optimizer")
    fractions = [r["fraction"] for r in rows]
    used = [r for r in rows if r["fraction"] > 0]
    fig, axes = new_figure(len(steps), 1, (8.6, 1.45 * len(steps) + 1.3), sharex=True, sharey=True)
    for ax, step in zip(axes[:, 0], steps):
        zeros = []
        for n in names:
            bins = sorted(hists.get((step, n), []), key=lambda r: r["bin_low"])
            if not bins:
                continue
            style = palette.style(n)
            edges = [b["bin_low"] for b in bins] + [bins[-1]["bin_high"]]
            lr = files.tuned_lr(files.task, n)
            ax.stairs([b["fraction"] for b in bins], edges, label=label(n, lr), **style)
            ax.axvline(bins[0]["median_abs_update"], color=style["color"], ls=":", lw=1)
            if bins[0]["fraction_zero"] > 0:
                zeros.append(f"{n} {100 * bins[0]['fraction_zero']:.2g}%")
        if zeros:
            ax.text(
                0.99,
                0.85,
                "exactly 0: " + ", ".join(zeros),
                transform=ax.transAxes,
                ha="right",
                fontsize=7,
            )
        ax.set_ylabel(f"step {step + 1:g}")
    ax = axes[-1, 0]
    ax.set_xscale("log")
    if used:
        ax.set_xlim(min(r["bin_low"] for r in used), max(r["bin_high"] for r in used))
    if wants_log(fractions):
        ax.set_yscale("log")
    ax.set_xlabel("update magnitude |Δθ| of a coordinate (parameter units)")
    fig.supylabel("fraction of coordinates per bin", fontsize=9)
    fig.legend(
        *axes[0, 0].get_legend_handles_labels(),
        loc="outside lower center",
        ncols=min(len(names), 4),
        title="baselines at their tuned learning rate",
    )
    seed = files.settings.get("seed")
    title(
        fig,
        "Figure 9 — distribution of the per-coordinate update magnitude |Δθ| over training",
        f"{where(files, [files.task])}; one run{f' (seed {seed})' if seed is not None else ''} "
        f"per optimizer; dotted verticals: medians{lopt_text(files, names)}",
    )
    return save_png(fig, path)
