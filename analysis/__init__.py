"""How optimizers move through parameter space: the paper's analyses, for any optimizer.

- :mod:`analysis.recording`: record a run of any ``torch.optim.Optimizer`` on any task (θ, g,
  Δθ, per-sample gradients, probes of the update on several minibatches), one file per run;
- :mod:`analysis.symmetry_traces`: symmetry-constraint deviations along a trajectory (the
  structures and constraints themselves live in :mod:`l2o.symmetry`, shared with meta-training);
- :mod:`analysis.heavy_tail`: the α tail index of gradient and update noise;
- :mod:`analysis.covariance`: covariance of updates across minibatches (trace, top eigenvalues);
- :mod:`analysis.distributions`: histograms of |Δθ| over training;
- :mod:`analysis.figures`: ``python analysis/figures.py figN [--quick]``, the paper's figures.

This package imports ``l2o`` and ``baselines`` and never ``meta_train`` (figure 5 meta-trains
through the ``meta_train/run.py`` command line).
"""
