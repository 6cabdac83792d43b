"""Fair evaluation of learned optimizers: suites of (task, dataset, steps) cases, baselines tuned
per case for the very criterion that is reported, and tables with confidence intervals.

``meta_train/evaluate.py`` is the command line; ``run_suite`` and ``write_outputs`` are the API.
The package may import ``meta_train.configuration.engine``, ``inner_loop.truncation`` (the horizon
of a saved run) and ``training.checkpointing`` (to read a run's ``last.pt``); the config, the
trainer and the sweeps use its criteria, contenders and suites.
"""
