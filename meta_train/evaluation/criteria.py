"""What a run's loss curve is scored by; the table reports, and baselines are tuned for, the same.

Each criterion maps losses ``[runs, steps]`` (NaN after a divergence) to one value per run, lower
is better; a diverged run scores +inf, so it loses a tuning instead of crashing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

FINAL_FRACTION = 0.1
PAPER_STEPS = 50


def final_window(steps: int) -> int:
    """The number of last steps that ``final`` averages over: 10% of the horizon, at least one."""
    return max(1, math.ceil(FINAL_FRACTION * steps))


def _final(losses: torch.Tensor) -> torch.Tensor:
    return losses[:, -final_window(losses.shape[1]) :].mean(1)


def _mean(losses: torch.Tensor) -> torch.Tensor:
    return losses.mean(1)


def _paper50(losses: torch.Tensor) -> torch.Tensor:
    return losses[:, :PAPER_STEPS].sum(1)


CRITERIA: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "final": (_final, "mean training loss over the last 10% of steps"),
    "mean": (_mean, "mean training loss over the horizon"),
    "paper50": (_paper50, "sum of the first 50 training losses (the paper's tuning criterion)"),
}
DEFAULT_CRITERIA = ("final", "mean")
#: meta-validation's horizon unless ``validation.steps`` says otherwise: the config's default, and
#: the horizon a saved run's ``best.pt`` was selected on when its config predates the key
VALIDATION_STEPS = 200


def check_criteria(names: list[str] | tuple[str, ...]) -> list[str]:
    unknown = [n for n in names if n not in CRITERIA]
    if unknown or not names:
        raise ValueError(f"unknown criteria {unknown or names}; available: {sorted(CRITERIA)}")
    return list(dict.fromkeys(names))


def score(criterion: str, losses: torch.Tensor) -> torch.Tensor:
    """Per-run values of ``criterion`` (float64); +inf for a run that diverged."""
    if losses.dim() != 2:
        raise ValueError(f"losses must be [runs, steps], got shape {tuple(losses.shape)}")
    values = CRITERIA[criterion][0](losses.to(torch.float64))
    diverged = ~torch.isfinite(losses).all(1)
    return values.masked_fill(diverged, math.inf)
