"""The figures' numbers (rows, summaries, verdicts) are computed and checked without matplotlib."""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch

import analysis
from analysis.distributions import abs_update_histogram, log_bins


@pytest.fixture
def figures(monkeypatch):
    """A fresh import of ``analysis.figures`` where ``import matplotlib`` fails."""
    monkeypatch.setattr(analysis, "figures", getattr(analysis, "figures", None), raising=False)
    for name in list(sys.modules):
        if name.split(".")[0] == "matplotlib" or name.startswith("analysis.figures"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401
    return {
        name: importlib.import_module(f"analysis.figures.{name}")
        for name in ("fig4", "fig5", "fig7", "fig8", "fig9", "plots", "cli")
    }


def test_plotting_without_matplotlib_says_what_is_missing(figures):
    with pytest.raises(ImportError, match="pip install matplotlib"):
        figures["plots"].pyplot()


def test_fig4_summary(figures):
    steps = 20
    loss = torch.linspace(2.0, 1.0, steps)
    ones = torch.ones(steps)

    def run(mag: float, rel: float) -> tuple[torch.Tensor, ...]:
        return (mag * ones, rel * ones, 1e-7 * ones, loss)

    curves = {
        ("t", "scale", "Adam"): [run(1.0, 0.2), run(3.0, 0.4)],
        ("t", "scale", "L2O"): [run(4.0, 0.5)],
        ("t", "scale", "SGD"): [run(0.0, 0.0)],
    }
    summary = figures["fig4"].summarize(curves, steps)
    adam = summary["per_curve"]["t/scale/Adam"]
    assert adam["mean_magnitude"] == pytest.approx(2.0)
    assert adam["mean_relative"] == pytest.approx(0.3)
    assert adam["loss_first_10pct"] == pytest.approx(float(loss[:2].mean()))
    assert adam["final_loss"] == pytest.approx(float(loss[-10:].mean()))
    assert math.isnan(adam["corr_deviation_vs_loss_drop"])  # a constant deviation
    assert summary["verdict"] == [
        "t/scale: L2O/Adam magnitude ×2, relative 0.5 vs 0.3; SGD relative 0.0e+00",
        "t: beats tuned Adam? nothing to compare: no optimizer ran Adam's seeds",
    ]


def test_fig4_questions_compare_the_optimizers_that_beat_adam_with_adam(figures):
    """Synthetic runs (3 seeds): "fast" beats Adam and breaks the symmetries more, "tidy" beats
    it and breaks them less, "slow" does not beat it; the answer is computed from intervals."""
    steps = 20
    ones = torch.ones(steps)

    def runs(final: list[float], rel: float) -> list[tuple[torch.Tensor, ...]]:
        # seed i: relative deviation rel·(1 + 0.01 i) in every kind, loss ending at final[i]
        return [
            (ones, rel * (1 + 0.01 * i) * ones, ones, torch.linspace(3.0, f, steps))
            for i, f in enumerate(final)
        ]

    kinds = ("rescale", "scale")
    per_name = {
        "Adam": runs([1.0, 1.1, 0.9], 0.3),
        "fast": runs([0.5, 0.55, 0.45], 0.6),
        "tidy": runs([0.6, 0.62, 0.58], 0.1),
        "slow": runs([2.0, 2.1, 1.9], 0.9),
    }
    curves = {("t", k, n): r for k in kinds for n, r in per_name.items()}
    summary = figures["fig4"].summarize(curves, steps)
    q = summary["questions"]["t"]
    fast = q["per_optimizer"]["fast"]
    assert fast["beats_adam"] is True and fast["breaks_symmetries_vs_adam"] == "more"
    assert fast["deviation_ratio_to_adam"]["mean"] == pytest.approx(2.0)
    assert fast["final_loss_ratio_to_adam"]["ci95"][1] < 1.0
    assert q["per_optimizer"]["tidy"]["breaks_symmetries_vs_adam"] == "less"
    assert q["per_optimizer"]["slow"]["beats_adam"] is False
    assert q["answer"] == (
        "beat tuned Adam: fast, tidy; of them break the symmetries more than Adam: fast; "
        "less: tidy; not clearly either: none"
    )
    assert summary["verdict"][-1] == f"t: {q['answer']}"
    curve = summary["per_curve"]["t/scale/fast"]
    assert curve["relative_ratio_to_adam"] == pytest.approx(2.0)
    low, high = curve["final_loss_ci95"]
    assert low < curve["final_loss"] < high and curve["seeds"] == 3
    # one seed each: no interval, no answer
    single = {key: r[:1] for key, r in curves.items()}
    answer = figures["fig4"].summarize(single, steps)["questions"]["t"]["answer"]
    assert "undetermined" in answer


def test_fig5_summary_compares_the_strongest_regularization_with_none(figures):
    def run(loss: float, rel: float, mag: float) -> tuple[torch.Tensor, ...]:
        return (torch.full((12,), loss), torch.full((12,), rel), torch.full((12,), mag))

    curves = {0.0: [run(1.0, 0.5, 3.0)], 1.0: [run(2.0, 0.1, 1.0), run(4.0, 0.3, 1.0)]}
    summary = figures["fig5"].summarize(curves, (0.0, 1.0), "t")
    assert summary["per_reg_mul"]["1"]["final_loss"] == pytest.approx(3.0)
    assert summary["per_reg_mul"]["1"]["mean_relative_deviation"] == pytest.approx(0.2)
    # seeds' final losses 2 and 4: 3 ± t(0.975, 1) · √2 / √2
    assert summary["per_reg_mul"]["1"]["final_loss_ci95"] == pytest.approx(
        [3 - 12.7062, 3 + 12.7062]
    )
    assert all(math.isnan(v) for v in summary["per_reg_mul"]["0"]["final_loss_ci95"])  # 1 seed
    assert summary["verdict"].startswith("task t: final loss reg_mul=0 1 vs reg_mul=1 3;")
    assert summary["verdict"].endswith("Regularization hurts: True")


def test_fig7_summary_ranks_deviation_against_final_loss(figures):
    rows = [
        {"alpha": a, "seed": s, "relative_deviation": a, "final_loss": 2 - a + s, "mean_loss": 1}
        for a in (1.0, 0.0, 0.5)
        for s in (0, 1)
    ]
    summary = figures["fig7"].summarize(rows)
    assert summary["alphas"] == [0.0, 0.5, 1.0]
    assert summary["final_loss"] == pytest.approx([2.5, 2.0, 1.5])
    assert summary["spearman_deviation_vs_final_loss"] == pytest.approx(-1.0)
    assert "best α 1" in summary["verdict"]


def test_fig8_sgd_update_noise_has_the_gradient_noise_tail(figures):
    fig8 = figures["fig8"]
    grads = torch.distributions.StudentT(1.5).sample((32, 400)).double()
    rows = [
        fig8.probe_row("SGD", 0, 1, grads, -0.1 * grads),
        fig8.probe_row("L2O", 0, 1, grads, torch.randn(32, 400, dtype=torch.float64)),
    ]
    sgd = rows[0]
    assert sgd["alpha_update_pooled"] == pytest.approx(sgd["alpha_grad_pooled"], rel=1e-6)
    assert sgd["cov_trace_update"] == pytest.approx(0.01 * sgd["cov_trace_grad"], rel=1e-6)
    assert sgd["cov_trace_rel_update"] == pytest.approx(sgd["cov_trace_rel_grad"], rel=1e-6)
    # NaN α (discrete noise) is left out of the means instead of poisoning them
    rows.append({**rows[0], "seed": 1, "alpha_grad_pooled": math.nan})
    agg = fig8.aggregate(rows, ["L2O", "SGD"])
    assert agg["SGD"]["alpha_grad_pooled"] == pytest.approx(sgd["alpha_grad_pooled"])
    lines = fig8.verdict(agg, ["L2O", "SGD"])
    assert lines[0].endswith("less heavy-tailed updates: True")  # Gaussian vs Student-t(1.5)
    assert fig8.update_trace_by_step(rows, "SGD") == ([1], [pytest.approx(sgd["cov_trace_update"])])


def test_fig8_a_zero_update_has_no_tail_index_or_relative_trace(figures):
    """general's update at the end of its cosine schedule is exactly zero on every minibatch:
    its α and its trace relative to the mean update are undefined (NaN), not an error or ∞."""
    grads = torch.randn(32, 400, dtype=torch.float64)
    row = figures["fig8"].probe_row("general", 0, 500, grads, torch.zeros(32, 400))
    assert math.isnan(row["alpha_update_pooled"]) and math.isnan(row["alpha_update_standardized"])
    assert row["cov_trace_update"] == 0 and math.isnan(row["cov_trace_rel_update"])
    assert math.isfinite(row["alpha_grad_pooled"])


def test_fig9_summary_tracks_the_l2o_median_against_adam(figures):
    fig9 = figures["fig9"]
    edges = log_bins(1e-9, 1e1, 60)
    hists = {
        name: [abs_update_histogram(torch.full((100,), v), s, edges) for s, v in zip((0, 5), vals)]
        for name, vals in {"L2O": (1.0, 1e-2), "Adam": (1e-3, 1e-3)}.items()
    }
    summary = fig9.summarize(hists, (0, 5))
    assert summary["median_abs_update"]["L2O"] == {1: pytest.approx(1.0), 6: pytest.approx(1e-2)}
    assert "L2O largest: True" in summary["verdict"]
    assert "|log10(L2O/Adam)| 3.00 → 1.00; approaches Adam: True" in summary["verdict"]
    rows = fig9.histogram_rows("L2O", hists["L2O"], edges)
    assert len(rows) == 2 * 60 and sum(r["fraction"] for r in rows if r["step"] == 0) == 1.0


def test_every_figure_has_each_size_and_the_paper_sizes_tune_as_the_paper(figures):
    from l2o.training import PAPER_LR_GRID

    for name in ("fig4", "fig5", "fig7", "fig8", "fig9"):
        settings = figures[name].SETTINGS
        assert set(settings) == {"tiny", "quick", "full"}, name
        for size in ("quick", "full"):
            tuning = getattr(settings[size], "tuning", None)
            if tuning is not None:  # fig5 tunes nothing: it meta-trains
                assert (tuning.lr_grid, tuning.steps) == (PAPER_LR_GRID, 50), (name, size)
