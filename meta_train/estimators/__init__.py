"""Meta-gradient estimators behind one interface (:class:`Estimator`), chosen by
``unroll.estimator``, and :func:`meta_step_gradient`, the call that runs one.

One module per estimator; each imports ``meta_train.inner_loop.unroll`` (the inner loop's types) and
``meta_train.estimators.base``, never the reverse. The built-in ones are listed in
``_ESTIMATORS`` below; :func:`register_estimator` adds others (e.g. from a plug-in module).
The package may import ``meta_train.configuration.engine`` and the inner loop
(``inner_loop.unroll``, ``inner_loop.meta_losses``); the trainer, the family runner, the config's
checks and ``inner_loop.truncation`` (for ``particles.particle_dims``) use it."""

from __future__ import annotations

from collections.abc import Sequence

from l2o.optimizers.base import LearnedOptimizerNet
from meta_train.configuration.engine import ConfigError
from meta_train.estimators.base import Estimator
from meta_train.estimators.es import AntitheticES
from meta_train.estimators.pes import PES
from meta_train.estimators.truncated_bptt import FirstOrder, SecondOrder
from meta_train.inner_loop.unroll import (
    InnerState,
    Regularizer,
    UnrollConfig,
    UnrollResult,
    functional_optimizee,
)

__all__ = [
    "Estimator",
    "available_estimators",
    "get_estimator",
    "make_estimator",
    "meta_step_gradient",
    "register_estimator",
]

_ESTIMATORS: dict[str, type[Estimator]] = {
    "first": FirstOrder,
    "second": SecondOrder,
    "es": AntitheticES,
    "pes": PES,
}


def register_estimator(name: str, cls: type[Estimator]) -> None:
    """Make ``cls`` selectable as ``unroll.estimator: <name>``."""
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise TypeError(f"an estimator must subclass meta_train.estimators.Estimator, got {cls!r}")
    _ESTIMATORS[name] = cls


def available_estimators() -> list[str]:
    return sorted(_ESTIMATORS)


def get_estimator(name: str) -> type[Estimator]:
    """The estimator class registered as ``name``."""
    if name not in _ESTIMATORS:
        raise ConfigError(
            f"unroll.estimator: unknown meta-gradient estimator {name!r}; "
            f"available: {available_estimators()}"
        )
    return _ESTIMATORS[name]


def make_estimator(cfg: UnrollConfig) -> Estimator:
    """A fresh estimator for ``cfg`` (``cfg.estimator`` with ``cfg.estimator_kwargs``)."""
    return get_estimator(cfg.estimator)(cfg, **cfg.estimator_kwargs)


def meta_step_gradient(
    lopt: LearnedOptimizerNet,
    task,
    inner: InnerState,
    samplers: Sequence,
    cfg: UnrollConfig,
    regularizer: Regularizer | None = None,
    *,
    estimator: Estimator | None = None,
    seed: int = 0,
) -> tuple[UnrollResult, InnerState]:
    """Run ``cfg.length`` inner steps of the B optimizees and ACCUMULATE the meta-gradient
    (the meta-loss averaged over B, plus the regularization) into ``lopt``'s ``.grad``.

    ``samplers``: one minibatch sampler per optimizee (``.next() -> (x, y)``).
    ``regularizer(updates, params) -> scalar``: added per inner step to the meta-loss, where
    ``updates`` are the applied changes Δθ (θ ← θ + Δθ) and ``params`` the (detached) parameters
    the step started from, both as ``{name: tensor}`` of one optimizee.
    ``estimator``: the run's estimator object (holding any persistent state); None makes a
    fresh one from ``cfg``. ``seed``: this meta-step's seed (see :class:`Estimator`).

    Does not step, clip or zero any optimizer: the caller checks ``result.finite`` and the
    gradient's finiteness, clips, steps the meta-optimizer and zeroes the gradients.
    Returns the result and the new inner state, detached from every graph.
    """
    if len(samplers) != inner.batch_size:
        raise ValueError(f"got {len(samplers)} samplers for {inner.batch_size} optimizees")
    optimizee = functional_optimizee(task, inner.params.device)
    if optimizee.spec != inner.spec:
        raise ValueError(f"inner state does not match task {task.name!r}'s parameters")
    if estimator is None:
        estimator = make_estimator(cfg)
    elif estimator.cfg != cfg:
        raise ValueError(f"the estimator was made for {estimator.cfg}, not for {cfg}")
    return estimator.estimate(lopt, optimizee, inner, samplers, regularizer, seed)
