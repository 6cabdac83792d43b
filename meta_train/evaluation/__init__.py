"""Fair evaluation of learned optimizers: suites of (task, dataset, steps) cases, baselines tuned
per case for the very criterion that is reported, and tables with confidence intervals.

``meta_train/evaluate.py`` is the command line; ``run_suite`` and ``write_outputs`` are the API.
"""
