"""The figures' command line: ``python analysis/figures.py figN|all [--quick|--tiny] …``, and
``python analysis/figures.py redraw [--out DIR]`` (each figure in DIR drawn from its files)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from analysis.figures import fig4, fig5, fig7, fig8, fig9, plots
from analysis.figures.output import write_csv, write_summary
from analysis.figures.redraw import draw_figure, redraw_folder
from analysis.figures.runs import Context, SettingsMismatch, resolve_lopts

#: Each figure's module (settings per size, ``compute``) and its plot.
FIGURES = {
    "fig4": (fig4, plots.fig4),
    "fig5": (fig5, plots.fig5),
    "fig7": (fig7, plots.fig7),
    "fig8": (fig8, plots.fig8),
    "fig9": (fig9, plots.fig9),
}
DEFAULT_LOPT = "lstm-paper,general"


def run_figure(ctx: Context, fig: str, settings) -> dict:
    """Compute figure ``fig``, write its CSV, PNG and summary; returns the summary. The summary
    holds ``wall_seconds`` (this invocation) and ``compute_seconds`` (all the work its numbers
    rest on, reused recordings, cached tuning and finished meta-trainings included)."""
    module, plot = FIGURES[fig]
    start = time.perf_counter()
    ctx.start_figure()
    data = module.compute(ctx, settings)
    write_csv(ctx.path(f"{fig}.csv"), data.rows)
    lopt = ctx.lopt if module.USES_LOPT else None
    timing = {
        "wall_seconds": round(time.perf_counter() - start, 1),
        "compute_seconds": round(ctx.compute_seconds, 1),
    }
    summary = {**data.summary, **timing, "data_used": ctx.data_used}
    path = write_summary(
        ctx.path(f"{fig}_summary.json"), fig, ctx.size, lopt, summary, dataclasses.asdict(settings)
    )
    draw_figure(ctx.out, fig, module, plot)  # from the files just written, as redraw does
    return json.loads(path.read_text())


def settings_for(fig: str, size: str, seeds: int | None, paper_lrs: bool):
    """The figure's settings of this size, with the command line's overrides."""
    settings = FIGURES[fig][0].SETTINGS[size]
    changes = {}
    if seeds is not None and hasattr(settings, "seeds"):
        changes["seeds"] = seeds
    if paper_lrs and hasattr(settings, "paper_lrs"):
        changes["paper_lrs"] = True
    return dataclasses.replace(settings, **changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python analysis/figures.py",
        description="Reproduce the paper's figures (PNG + CSV + summary JSON per figure).",
    )
    parser.add_argument(
        "figure",
        choices=[*FIGURES, "all", "redraw"],
        help="a figure, all of them, or redraw: draw every figure in --out again from its "
        "CSV and summary (nothing recomputed)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="minutes on 2 CPU cores")
    size.add_argument("--tiny", action="store_true", help="seconds: a smoke test of the pipeline")
    parser.add_argument("--out", default="out/figures", help="output folder (default out/figures)")
    parser.add_argument(
        "--lopt",
        default=DEFAULT_LOPT,
        help="learned optimizers, comma-separated: pretrained names or checkpoint paths "
        f"(default {DEFAULT_LOPT}); the first is the paper's, shown as L2O; 'none' leaves "
        "them out",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="evaluation seeds per optimizer (fig9 draws the first seed's histograms)",
    )
    parser.add_argument(
        "--paper-lrs",
        action="store_true",
        help="fig7: the paper's fixed learning rates (SGD 0.5, Lion 0.005) instead of tuned ones",
    )
    args = parser.parse_args(argv)
    if args.figure == "redraw":
        return redraw_folder(Path(args.out), FIGURES)
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be ≥ 1")
    size = "quick" if args.quick else "tiny" if args.tiny else "full"
    figures = tuple(FIGURES) if args.figure == "all" else (args.figure,)
    lopt = None if args.lopt.lower() == "none" else args.lopt
    lopt_files = {}
    if lopt is not None and any(FIGURES[f][0].USES_LOPT for f in figures):
        try:  # before any baseline is tuned: a typo must not cost minutes
            lopt_files = resolve_lopts(lopt)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    ctx = Context(size, Path(args.out), lopt, lopt_files, args.device)
    for fig in figures:
        try:
            summary = run_figure(ctx, fig, settings_for(fig, size, args.seeds, args.paper_lrs))
        except SettingsMismatch as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"{fig}: {summary['wall_seconds']:.0f} s (compute {summary['compute_seconds']:.0f} s "
            f"in all, resumed work included) → {ctx.out}/{fig}.png, {fig}.csv"
        )
        verdict = summary.get("verdict")
        for line in verdict if isinstance(verdict, list) else [verdict]:
            if line:
                print(f"  {line}")
    return 0
