"""Sampling that survives a kill: a sweep's n-th point depends on its seed and n alone.

Optuna's samplers draw from one random stream that starts afresh in every process, so a sweep
continued after a kill would draw its first points again (a random sweep of 3 trials, killed
after 2, ends with a duplicate and without the third point). Here each new point gets a sampler
made for it, seeded by the sweep's seed and the number of points drawn before it; a trial queued
again after an interruption reuses its predecessor's point and draws none. Imported only once
Optuna is known to be installed (``meta_train.sweeps.spec.optuna_module``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna

from meta_train.sweeps.trials import DRAWN, REQUEUE_OF


def points_drawn(study) -> int:
    """How many points the study's trials drew (queued-again trials reuse their predecessor's)."""
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if DRAWN in t.user_attrs and REQUEUE_OF not in t.user_attrs)


def point_seed(seed: int, index: int) -> int:
    """The seed of point ``index`` of a sweep seeded ``seed`` (well mixed, never colliding)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class PerPointSampler(optuna.samplers.BaseSampler):
    """``make(seed)``'s sampler, made afresh for each trial with that trial's point's seed."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner = make(point_seed(seed, 0))

    def before_trial(self, study, trial) -> None:
        self._inner = self._make(point_seed(self._seed, points_drawn(study)))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
