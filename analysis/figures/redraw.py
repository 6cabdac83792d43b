"""Drawing a figure from its files, and ``python analysis/figures.py redraw``: every figure
present in a folder drawn again from its CSV and summary, nothing recomputed.

A figure run draws through ``draw_figure`` too, right after writing its files, so there is one
plotting path and a redraw gives the run's picture (with whatever the plots have learned since).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from analysis.figures.tables import FigureFileError, FigureFiles, load_figure

Plot = Callable[[FigureFiles, Path], Path]


def draw_figure(folder: Path, fig: str, module: ModuleType, plot: Plot) -> Path:
    """Draw ``folder/fig.png`` from ``fig``'s files in ``folder``."""
    return plot(load_figure(folder, fig, module), folder / f"{fig}.png")


def redraw_folder(folder: Path, figures: dict[str, tuple[ModuleType, Plot]]) -> int:
    """Redraw every figure of ``figures`` whose CSV is in ``folder``, one line each; an absent
    figure is skipped with a line, a bad file is a one-line error (the others are still drawn).
    Returns the exit code: 0, or 2 after an error or when no figure is there."""
    if not folder.is_dir():
        print(f"error: {folder}: no such folder", file=sys.stderr)
        return 2
    drawn = failed = 0
    for fig, (module, plot) in figures.items():
        table = folder / f"{fig}.csv"
        if not table.is_file():
            print(f"{fig}: skipped (no {table})")
            continue
        try:
            path = draw_figure(folder, fig, module, plot)
        except FigureFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        except ImportError as exc:  # matplotlib: the message says how to install it
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{fig}: redrawn from {table.name} → {path}")
        drawn += 1
    if not drawn and not failed:
        print(f"error: {folder}: no figure's CSV (figN.csv) to redraw", file=sys.stderr)
    return 0 if drawn and not failed else 2
