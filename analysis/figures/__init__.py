"""The paper's figures, one subcommand each, writing PNG + CSV of the plotted numbers.

    python analysis/figures.py fig4 --quick --out out/figures  # symmetry breaking along training
    python analysis/figures.py fig5 --quick     # meta-training with the symmetry regularizer
    python analysis/figures.py fig7 --quick     # Lion–SGD interpolation
    python analysis/figures.py fig8 --quick     # tail index and update covariance
    python analysis/figures.py fig9 --quick     # |Δθ| histograms over training
    python analysis/figures.py all --quick      # (or python -m analysis.figures, or l2o-figures)
    python analysis/figures.py redraw --out out/figures  # every PNG again, from its CSV

``--quick`` runs in minutes on 2 CPU cores (fewer steps, seeds and probes); without it the
paper's settings are used (hours for fig5). ``--tiny`` is a seconds-long smoke mode for tests.
Each figure also writes ``figN_summary.json``: the numbers that decide whether the paper's finding
is reproduced, and a one-line verdict. The learned optimizer is ``--lopt`` (a pretrained name for
``LearnedOptimizer.from_pretrained`` or a checkpoint path such as a run's ``best.pt``).
Handcrafted baselines run at the best learning rate of the paper's grid search (sum of training
losses over the first steps, on seeds disjoint from the evaluation seeds), cached in
``DIR/lr_cache.json``.

Layout: one module per figure (``fig4`` … ``fig9``: its settings per size, the runs, and the
numbers — rows, summary, verdict — as functions that need no matplotlib); shared helpers in
``tuning`` (learning-rate grid search and its cache), ``runs`` (optimizers, recorded runs, the
output folder), ``output`` (CSV and summary files) and ``stats``; the drawing in ``plots``
(one function per figure) and ``plot_style`` (colors, bands, PNG files), which read a figure's
files back through ``tables`` and average seeds with ``bands``, so that ``python
analysis/figures.py redraw`` (``redraw``) draws a finished figure again without recomputing it;
the command line in ``cli``.
"""

from analysis.figures.cli import main

__all__ = ["main"]
