"""The figures' shared look: matplotlib on demand, one color per optimizer in every figure,
legend labels with the tuned learning rate, mean curves with 95% bands, small PNG files.

matplotlib is imported on the first plot, so that the figures' numbers can be computed and
tested where it is not installed.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch

import baselines
from analysis.figures.bands import band, wants_log
from l2o.io import atomic_write

DPI = 100  # an 11-inch figure is 1100 px: sharp at the documentation's width
#: Palette of the saved PNG: line art needs few colors, and each halving of the palette makes
#: the file smaller (figure 4 at full size, 24 panels: 440 KB with 256, 250 KB with 64).
PNG_COLORS = 64
RC = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
}
#: The same optimizer has the same color in every figure (keys: the shown name, lowercased).
FIXED_COLORS = {
    "l2o": "tab:red",
    "general": "tab:orange",
    "sgd": "tab:blue",
    "adam": "tab:green",
    "lion": "tab:purple",
    "muon": "tab:brown",
    "sf_adamw": "tab:pink",
}
#: Other registered baselines, dashed, by their place in the registry (so the same everywhere).
BASELINE_COLORS = (
    "tab:cyan",
    "tab:olive",
    "black",
    "navy",
    "goldenrod",
    "teal",
    "maroon",
    "slategray",
    "limegreen",
)
#: Further learned optimizers, solid, in their ``--lopt`` order (the same in every figure).
LEARNED_COLORS = ("firebrick", "sienna", "darkmagenta", "olivedrab")
BAND_ALPHA = 0.18


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
    matplotlib.rcParams.update(RC)
    import matplotlib.pyplot as plt

    return plt


def new_figure(nrows: int, ncols: int, size: tuple[float, float], **kwargs):
    """A figure whose layout leaves room for the title, labels and legends."""
    fig, axes = pyplot().subplots(
        nrows, ncols, figsize=size, squeeze=False, layout="constrained", **kwargs
    )
    return fig, axes


def title(fig, headline: str, details: str) -> None:
    """The figure's title: what it shows, then how it was made (wrapped to the width)."""
    width = int(fig.get_figwidth() * 12)  # characters of 10 pt text per inch, with a margin
    details = textwrap.fill(details, width, break_long_words=False, break_on_hyphens=False)
    fig.suptitle(f"{headline}\n{details}", fontsize=10)


def save_png(fig, path: Path) -> Path:
    """Save as a ``PNG_COLORS``-color PNG (a fifth of the size of matplotlib's RGBA one: the
    figures are committed in the documentation), atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    pyplot().close(fig)
    image = Image.open(buffer).convert("RGB")
    image = image.quantize(PNG_COLORS, Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return atomic_write(path, out.getvalue())


class Palette:
    """Colors and line styles of the optimizers of one figure: fixed for the paper's and 2026's
    optimizers (``FIXED_COLORS``), by registry order for other baselines, by order of appearance
    (``--lopt`` order) for further learned optimizers."""

    def __init__(self, names: Sequence[str]):
        fixed_or_baseline = set(FIXED_COLORS) | set(baselines.available())
        self.others = [n for n in names if n.lower() not in fixed_or_baseline]
        self.baselines = [b for b in baselines.available() if b not in FIXED_COLORS]

    def style(self, name: str) -> dict:
        key = name.lower()
        if key in FIXED_COLORS:
            return {"color": FIXED_COLORS[key], "ls": "-", "lw": 1.5}
        if key in self.baselines:
            i = self.baselines.index(key)
            return {"color": BASELINE_COLORS[i % len(BASELINE_COLORS)], "ls": "--", "lw": 0.9}
        i = self.others.index(name) if name in self.others else 0
        return {"color": LEARNED_COLORS[i % len(LEARNED_COLORS)], "ls": "-", "lw": 1.3}

    def shaded(self, names: Sequence[str]) -> set[str]:
        """The names whose curves get a band: the solid lines only (a dozen shaded dashed
        baselines would hide the rest)."""
        return {n for n in names if self.style(n)["ls"] == "-"}


def label(name: str, lr: float | None) -> str:
    """A legend entry: the optimizer and, for a baseline, the learning rate it ran at."""
    return name if lr is None else f"{name} (lr {lr:.3g})"


def draw_bands(
    ax, curves: dict[str, tuple[Sequence[float], torch.Tensor]], styles, labels, shaded=()
) -> None:
    """Each name's runs (a runs × x matrix) as a mean curve with its 95% band (for the names in
    ``shaded``, where there are several runs). The axis is logarithmic when the values span
    more than two decades, and then the mean and band are geometric (``bands.band``)."""
    log = wants_log(v for _, runs in curves.values() for v in runs.flatten().tolist())
    for name, (x, runs) in curves.items():
        b = band(runs, log)
        ax.plot(x, b.mean.tolist(), label=labels[name], **styles[name])
        if b.lo is not None and name in shaded:
            color = styles[name]["color"]
            ax.fill_between(x, b.lo.tolist(), b.hi.tolist(), color=color, alpha=BAND_ALPHA, lw=0)
    if log:
        ax.set_yscale("log")
