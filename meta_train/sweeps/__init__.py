"""The local sweep engine behind ``meta_train/sweep.py``: ``spec`` (a W&B sweep YAML read and
checked), ``sampler`` (grid, random and Optuna points, each depending on the seed and its index
alone), ``engine`` (the trials, run one after another as ``run.py`` processes), ``process`` (a
trial's process group, signals and exit codes), ``folders`` (trial folders, continued or set
aside), ``metrics`` (the metric a sweep optimizes, checked against what runs log) and ``report``
(the study's table). It may import ``configuration``, ``estimators``, ``evaluation``'s criteria
and contenders, and ``training``'s checkpointing and tracking; nothing but ``sweep.py`` imports
it."""
