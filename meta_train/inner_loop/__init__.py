"""The inner loop and its task distribution: ``unroll`` (optimizees trained by the learned
optimizer, batched over the meta-batch, and ``UnrollConfig``), ``meta_losses`` (what a truncation's
losses add up to), ``truncation`` (horizon schedules and per-task run clocks), ``families`` and
``family_runner`` (a meta-batch drawn from a family of tasks and task variations) and ``reference``
(a plain, slow meta-step the fast paths are tested against). It may import ``l2o``,
``configuration.engine`` and, for the runner that combines members' estimates, ``estimators`` and
``training.rank_slots``; the estimators build on ``unroll`` and ``meta_losses``."""
