"""Learning-rate tuning on a log-spaced grid that widens itself until no optimum sits on its edge.

One sweep of training runs serves every criterion (each picks its own argmin from the same loss
curves); the grid widens on a side whenever some criterion's best lr is that side's last point.
Where every lr diverges (or scores non-finite) the grid widens downward; if it still does after
the last widening, that criterion's tuning is recorded as diverged (``Tuning.diverged``, lr NaN)
and the evaluation goes on: one baseline that cannot be tuned on one case loses no other result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from meta_train.evaluation.criteria import score

_SIDE = {"lo": "lower", "hi": "upper"}
RunFn = Callable[[float, int], torch.Tensor]  # (lr, seed) -> training losses [steps]


@dataclass(frozen=True)
class LogGrid:
    """``lo · 10^(i / per_decade)`` up to ``hi``; widening adds ``widen_decades`` on a side."""

    lo: float = 1e-4
    hi: float = 10.0
    per_decade: int = 2
    widen_decades: int = 1
    max_widenings: int = 4  # per side

    def __post_init__(self) -> None:
        if not (0 < self.lo < self.hi < math.inf):
            raise ValueError(
                f"the lr grid needs finite 0 < lo < hi (--lr-range LO HI), got {self.lo:g} "
                f"and {self.hi:g}"
            )
        for key, least in (("per_decade", 1), ("widen_decades", 1), ("max_widenings", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(
                    f"the lr grid's {key} must be an integer >= {least}, got {value!r}"
                )

    def points(self, lo_exp: int = 0, hi_exp: int = 0) -> list[float]:
        """The grid stretched by ``lo_exp``/``hi_exp`` widenings below/above."""
        k = self.per_decade
        first = -lo_exp * self.widen_decades * k
        last = round(math.log10(self.hi / self.lo) * k) + hi_exp * self.widen_decades * k
        return [float(f"{self.lo * 10 ** (i / k):.6g}") for i in range(first, last + 1)]


DEFAULT_GRID = LogGrid()
QUICK_GRID = LogGrid(1e-3, 1.0)  # narrower start for --quick; widening still guards the edges


@dataclass
class GridPoint:
    lr: float
    score_mean: float  # +inf if any tuning run diverged
    diverged_runs: int


@dataclass
class Tuning:
    """The outcome for one criterion: the chosen lr, the whole grid, and what widening did;
    ``diverged``: every lr of the widened grid diverged, and ``lr`` is NaN."""

    criterion: str
    lr: float
    grid: list[GridPoint]
    notes: list[str] = field(default_factory=list)
    diverged: bool = False

    @property
    def at_edge(self) -> bool:
        return self.lr in (self.grid[0].lr, self.grid[-1].lr)


def tune(
    run: RunFn,
    criteria: Sequence[str],
    seeds: Sequence[int],
    grid: LogGrid = DEFAULT_GRID,
    extra: Sequence[float] = (),
) -> dict[str, Tuning]:
    """The best lr per criterion: mean score over ``seeds``, a divergence anywhere scores +inf.
    ``extra`` lrs join every pass of the grid (a learned optimizer's own nominal step size, so
    that its tuned nominal term is never a worse choice than the untrained one on these seeds;
    the edges stay the grid's)."""
    if not seeds:
        raise ValueError("tuning needs at least one seed")
    curves: dict[float, torch.Tensor] = {}
    scores: dict[tuple[str, float], GridPoint] = {}

    def point(criterion: str, lr: float) -> GridPoint:
        if lr not in curves:
            curves[lr] = torch.stack([run(lr, s) for s in seeds])
        key = (criterion, lr)
        if key not in scores:
            values = score(criterion, curves[lr])
            diverged = int((~torch.isfinite(values)).sum())
            scores[key] = GridPoint(lr, float(values.mean()), diverged)
        return scores[key]

    widen = {"lo": 0, "hi": 0}
    notes: dict[str, list[str]] = {c: [] for c in criteria}
    while True:
        edges = grid.points(widen["lo"], widen["hi"])
        lrs = sorted({*edges, *(lr for lr in extra if edges[0] < lr < edges[-1])})
        table = {c: [point(c, lr) for lr in lrs] for c in criteria}
        best = {c: _argmin(table[c]) for c in criteria}
        span = f"[{lrs[0]:g}, {lrs[-1]:g}]"
        dead = {c for c in criteria if not math.isfinite(table[c][best[c]].score_mean)}
        grow = []
        for side, index in (("lo", 0), ("hi", len(lrs) - 1)):
            edge = [c for c in criteria if best[c] == index]  # a dead criterion's argmin is 0
            if edge and widen[side] < grid.max_widenings:
                grow.append(side)
                for c in edge:
                    notes[c].append(
                        f"every lr in {span} diverged: widened downward by "
                        f"{grid.widen_decades} decade(s) and retuned"
                        if c in dead
                        else f"best lr {lrs[index]:g} at the {_SIDE[side]} edge of {span}: "
                        f"widened by {grid.widen_decades} decade(s) and retuned"
                    )
        if not grow:
            for c in dead:
                notes[c].append(f"diverged at every lr in {span}")
            for c in (c for c in criteria if c not in dead):
                if best[c] in (0, len(lrs) - 1):
                    side = "lo" if best[c] == 0 else "hi"
                    notes[c].append(
                        f"best lr {lrs[best[c]]:g} still at the {_SIDE[side]} edge after "
                        f"{widen[side]} widening(s): the optimum may lie beyond"
                    )
            return {
                c: Tuning(c, math.nan, table[c], notes[c], diverged=True)
                if c in dead
                else Tuning(c, lrs[best[c]], table[c], notes[c])
                for c in criteria
            }
        for side in grow:
            widen[side] += 1


def _argmin(points: list[GridPoint]) -> int:
    """Index of the lowest mean score (the first on ties)."""
    return min(range(len(points)), key=lambda i: points[i].score_mean)
