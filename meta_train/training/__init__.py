"""The run's machinery: the ``Trainer`` loop (epochs × runs × meta-steps) and what makes a run
reliable and scalable: ``run_state`` (the checkpoint's contents and exact resume, ``Trainer``'s
base), ``parts`` (device, task, family, regularizer and seeds built from the config, and the
checks before a run starts), ``step_checks`` (non-finite meta-steps skipped, the ranks agreeing),
``validation`` (held-out meta-validation, which picks ``best.pt``), ``checkpointing`` (atomic
writes, the run folder's lock, resume checks), ``distributed`` and ``rank_slots`` (torchrun:
which rank owns which slots of the meta-batch), ``tracking`` (metrics.jsonl and W&B), ``memory``
(the estimate checked before a run starts) and ``threads`` (CPU thread settings). It may import
``configuration``, ``inner_loop``, ``estimators`` and ``evaluation.criteria``; the command lines
and ``sweeps`` import it, and lower layers use only its leaf modules ``checkpointing`` and
``distributed`` (no project imports) and ``rank_slots``."""
