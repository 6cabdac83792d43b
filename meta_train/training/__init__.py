"""The run's machinery: the ``Trainer`` loop (epochs × runs × meta-steps, validation, early stop
on non-finite steps) and what makes a run reliable and scalable: ``run_state`` (the checkpoint's
contents and exact resume), ``checkpointing`` (atomic writes, the run folder's lock, resume
checks), ``distributed`` and ``rank_slots`` (torchrun: which rank owns which slots of the
meta-batch), ``tracking`` (metrics.jsonl and W&B), ``memory`` (the estimate checked before a run
starts) and ``threads`` (CPU thread settings). It may import ``configuration``, ``inner_loop``,
``estimators`` and ``evaluation.criteria``; only the command lines and ``sweeps`` import it,
apart from the leaf modules ``checkpointing`` and ``distributed`` (no project imports), which
lower layers use for the checkpoint format and the process group."""
