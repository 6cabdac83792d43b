"""The numbers a sweep can rank on: what ``meta_train/run.py`` logs for a config.

A sweep's ``metric.name`` must be one of them, or every trial runs to its end and then fails for
want of it. The names are those the run writes to ``metrics.jsonl`` and ``summary.json`` (W&B
receives the same): the trainer's meta-step records (``Trainer._result_scalars`` and
``Trainer.meta_step``, plus the estimator's own ``train/<estimator>/...`` numbers), its validation
records and summary (``Trainer._finish_run``, ``Trainer.train``), and the meta-test summary
(``meta_train.evaluate.evaluate_run``, with the ratio to the nominal term for an optimizer that has
one). ``tests/meta_train/test_sweep_checks.py`` compares them
with a real run's files, so a renamed metric fails a test instead of a sweep.
"""

from __future__ import annotations

import difflib

from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import MetaTrainConfig

# Every meta-step's record (the events-only ones, such as train/skipped, are no score).
STEP_METRICS = (
    "epoch",
    "run",
    "meta_step",
    "train/meta_loss",
    "train/inner_loss",
    "train/inner_loss_last",
    "train/reg_loss",
    "train/meta_grad_norm",
    "train/nonfinite_total",
    "train/inner_steps_per_s",
)
# Logged only when validation runs (best_val_loss is +inf, no score, without it).
VALIDATION_METRICS = ("val/loss", "val/best_loss", "val/improved", "best_val_loss")
EVAL_SUFFIXES = ("geomean_ratio", "won")  # eval/<suite>/<criterion>/<suffix> after a meta-test


def logged_metrics(cfg: MetaTrainConfig) -> list[str]:
    """The exact names a run of ``cfg`` logs (the estimator's own numbers are
    :func:`estimator_prefix` plus a name)."""
    from meta_train.evaluation.criteria import DEFAULT_CRITERIA  # run.py's meta-test reports them

    names = list(STEP_METRICS)
    if cfg.validation.enabled:
        names += VALIDATION_METRICS
    if cfg.meta_test.enabled:
        suffixes = EVAL_SUFFIXES + (("geomean_ratio_nominal",) if _has_nominal(cfg) else ())
        names += [
            f"eval/{suite}/{criterion}/{suffix}"
            for suite in cfg.meta_test.suites
            for criterion in DEFAULT_CRITERIA
            for suffix in suffixes
        ]
    return names


def _has_nominal(cfg: MetaTrainConfig) -> bool:
    """Whether the learned optimizer has a nominal term (the meta-test reports its ratio to it)."""
    import torch

    import l2o.optimizers as lo
    from meta_train.evaluation.contenders import NOMINAL_LR_KEYS

    with torch.device("meta"):  # nothing is allocated
        net = lo.create(cfg.optimizer.name, **cfg.optimizer.kwargs)
    return getattr(net, "nominal", None) in NOMINAL_LR_KEYS


def estimator_prefix(cfg: MetaTrainConfig) -> str:
    from meta_train.estimators import get_estimator

    return f"train/{get_estimator(cfg.unroll.estimator).name}/"


def check_metric(cfg: MetaTrainConfig, name: str) -> None:
    """A ConfigError unless a run of ``cfg`` logs ``name``, naming the closest ones."""
    names = logged_metrics(cfg)
    prefix = estimator_prefix(cfg)
    if name in names or (name.startswith(prefix) and len(name) > len(prefix)):
        return
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    why = ""
    if name in VALIDATION_METRICS:
        why = " (validation.enabled is false)"
    elif name.startswith("eval/"):
        why = " (meta_test.enabled is false)" if not cfg.meta_test.enabled else ""
    raise ConfigError(
        f"metric.name {name!r} is not logged by meta_train/run.py{why}.{hint} "
        f"It logs: {', '.join(names)}, {prefix}*"
    )
