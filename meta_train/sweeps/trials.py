"""What a sweep's study records of each trial (its Optuna user attributes) and which trials
count: read by the engine, the sampler and the report alike, so it sits below them."""

from __future__ import annotations

# A trial's user attributes in the study that say where it stands
DRAWN = "values"  # its parameter values: it drew its point
INTERRUPTED = "interrupted"  # stopped by a kill or Ctrl-C: queued again, not counted
REQUEUE_OF = "requeue_of"  # queued again: the number of the interrupted trial it continues


def counted_trials(study) -> list:
    """The trials that ran to an end (complete or failed, not interrupted), by number."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    trials = study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if DRAWN in t.user_attrs and not t.user_attrs.get(INTERRUPTED)]
