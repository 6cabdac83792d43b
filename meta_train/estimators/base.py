"""The interface every meta-gradient estimator implements (truncated BPTT, ES, PES, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from l2o.optimizers.base import LearnedOptimizerNet
from meta_train.configuration.engine import ConfigError
from meta_train.inner_loop.unroll import (
    FunctionalOptimizee,
    InnerState,
    Regularizer,
    UnrollConfig,
    UnrollResult,
)


class Estimator:
    """One meta-gradient estimator, made once per training run from the ``unroll`` config.

    The contract of :meth:`estimate`:

    * it runs one truncation of ``cfg.length`` inner steps of the B optimizees in ``inner``
      (drawing one minibatch per step from each of ``samplers``) and returns the
      :class:`UnrollResult` (meta-loss, inner losses, ``metrics`` of its own) and the new inner
      state, detached from every graph;
    * it ACCUMULATES the meta-gradient d(meta-loss averaged over B + regularization)/dφ into the
      ``.grad`` of the learned optimizer's parameters that require grad (as ``backward`` does);
      it never zeroes, clips or steps: the trainer does;
    * ``seed`` is a fresh 63-bit integer per meta-step (``l2o.seeding.derive_seed`` of the run
      seed and the global meta-step): the only randomness an estimator may use besides the
      samplers (e.g. ES perturbations), so that a resumed run is bit-identical;
    * state that must survive between meta-steps (e.g. PES's accumulated perturbations) lives on
      the object and round-trips through :meth:`state_dict` / :meth:`load_state_dict`, which
      the trainer stores in ``last.pt`` (tensors and plain containers only: ``weights_only``).
      A new inner run starts when ``inner.step == 0``.

    Constructor: ``cls(cfg, **cfg.estimator_kwargs)``; a subclass that takes settings declares
    them as keyword arguments (an unknown one is a :class:`ConfigError` naming the key).
    """

    name: ClassVar[str]
    #: whether ``estimate`` takes a ``regularizer`` (the config refuses a regularization for an
    #: estimator that does not, before a run starts)
    supports_regularization: ClassVar[bool] = True

    def __init__(self, cfg: UnrollConfig, **kwargs: Any) -> None:
        if kwargs:
            raise ConfigError(
                f"unroll.estimator_kwargs: estimator {self.name!r} takes no settings, "
                f"got {sorted(kwargs)}"
            )
        self.cfg = cfg

    def estimate(
        self,
        lopt: LearnedOptimizerNet,
        optimizee: FunctionalOptimizee,
        inner: InnerState,
        samplers: Sequence,
        regularizer: Regularizer | None = None,
        seed: int = 0,
    ) -> tuple[UnrollResult, InnerState]:
        raise NotImplementedError(f"{type(self).__name__} does not implement estimate")

    def state_dict(self) -> dict[str, Any]:
        """The estimator's persistent state (empty for stateless estimators)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(
                f"estimator {self.name!r} is stateless but the checkpoint holds state for it: "
                f"{sorted(state)}"
            )
