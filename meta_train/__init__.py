"""meta_train package.

Importing it first (as ``meta_train/run.py`` does) makes idle OpenMP threads sleep instead of
spinning (``meta_train.training.threads``): it has to happen before torch loads the OpenMP
runtime."""

from meta_train.training.threads import prefer_passive_wait

prefer_passive_wait()
