"""Meta-training of learned optimizers. The subpackages, roughly bottom up:

- ``configuration``: the typed config (YAML + ``key=value`` overrides → checked dataclasses);
  its ``engine`` is the bottom layer, its ``schema`` sits above the layers it configures;
- ``inner_loop``: optimizees trained by the learned optimizer (``unroll``), meta-losses,
  truncation schedules, task families and the reference meta-step;
- ``estimators``: meta-gradient estimators (truncated BPTT, ES, PES) over the inner loop;
- ``evaluation``: suites, baselines tuned per case, reports (also ``evaluate.py``'s engine);
- ``training``: the run's machinery (``Trainer``, checkpoints and resume, torchrun, tracking);
- ``sweeps``: the local W&B-sweep engine;
- the command lines ``run.py``, ``evaluate.py`` and ``sweep.py``.

Modules import one another without a cycle, function-local imports included
(``tests/meta_train/test_import_graph.py``); a few leaf modules serve lower layers too
(``training.checkpointing`` and ``training.distributed`` import nothing of the project).

Importing this package first (as ``meta_train/run.py`` does) makes idle OpenMP threads sleep
instead of spinning (``meta_train.training.threads``): it has to happen before torch loads the
OpenMP runtime."""

from meta_train.training.threads import prefer_passive_wait

prefer_passive_wait()
