"""Meta-testing: one evaluation path for learned and handcrafted optimizers, honest statistics."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import baselines
import l2o.optimizers as lo
from l2o.tasks import get_task
from l2o.training import grid_search_lr, train_optimizee
from meta_train.config import MetaTestConfig
from meta_train.meta_test import (
    Curves,
    MetaTestReport,
    ci95,
    format_table,
    run_meta_test,
    summary_rows,
    write_report,
)

TASK = get_task("mnist_mlp_sigmoid", dataset="mnist5k", batch_size=32)
CFG = MetaTestConfig(
    steps=6,
    seeds=3,
    first_seed=1000,
    baselines=["sgd", "adam"],
    lr_grid=[0.01, 0.1, 1.0],
    grid_steps=4,
    grid_seeds=2,
    report_steps=[2],
)


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    net = lo.create("lstm", hidden_size=6, output_scale=0.1)
    return run_meta_test(TASK, {"l2o": net}, CFG, "cpu", log=lambda _: None), net


def test_every_optimizer_trains_the_same_fresh_optimizees(report):
    rep, net = report
    assert [c.name for c in rep.curves] == ["l2o", "sgd", "adam"]
    assert rep.seeds == [1000, 1001, 1002]
    for c in rep.curves:
        assert c.train_losses.shape == (3, 6)
    # the same seeds give the same initial weights and first minibatch: equal first losses
    first = [c.train_losses[:, 0] for c in rep.curves]
    assert all(torch.equal(first[0], f) for f in first[1:])
    # the learned optimizer's curve is exactly what the shared training path gives
    again = train_optimizee(TASK, lambda p: lo.LearnedOptimizer(p, net), 6, seed=1001)
    assert torch.equal(rep.curves[0].train_losses[1], again.train_losses)


def test_baselines_use_their_best_grid_lr_tuned_on_other_seeds(report):
    rep, _ = report
    for c in rep.curves[1:]:
        best, table = grid_search_lr(
            TASK,
            lambda p, lr, name=c.name: baselines.create(name, p, lr=lr),
            lrs=CFG.lr_grid,
            steps=CFG.grid_steps,
            seeds=[0, 1],
        )
        assert c.lr == best
        assert [p.lr for p in c.grid] == CFG.lr_grid
        assert [p.score_mean for p in c.grid] == [p.score_mean for p in table]
        again = train_optimizee(
            TASK, lambda p, name=c.name, lr=best: baselines.create(name, p, lr=lr), 6, seed=1000
        )
        assert torch.equal(c.train_losses[0], again.train_losses)


def test_ci95_is_the_student_t_interval():
    mean, half = ci95([1.0, 2.0, 3.0, 4.0])
    # t(0.975, 3) = 3.182446, sample std = 1.290994
    assert mean == pytest.approx(2.5)
    assert half == pytest.approx(3.182446 * 1.290994 / 2.0, rel=1e-5)
    assert math.isnan(ci95([1.0])[1]) and math.isnan(ci95([])[0])


def test_diverged_runs_are_counted_not_averaged():
    losses = torch.tensor([[2.0, 1.0, 0.5], [2.0, math.nan, math.nan], [2.0, 1.0, 0.7]])
    curves = Curves(
        "x", 0.1, losses, [0.4, math.nan, 0.6], [0.9, math.nan, 0.8], [False, True, False]
    )
    rep = MetaTestReport("task", 3, [0, 1, 2], [curves], report_steps=[2])
    (row,) = summary_rows(rep)
    assert row["diverged"] == 1 and row["seeds"] == 3
    assert row["final_train_loss"] == pytest.approx(0.6)
    assert row["loss_at_2"] == pytest.approx(1.0) and row["loss_at_2_ci95"] == 0.0
    assert "1/3" in format_table(rep)


def test_table_and_files(report, tmp_path):
    rep, _ = report
    table = format_table(rep)
    assert "mean ± 95% CI over seeds" in table
    for name in ("l2o", "sgd", "adam", "loss @ 2", "loss @ 6", "learned"):
        assert name in table
    paths = write_report(rep, tmp_path)
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    expected = summary_rows(rep)
    assert [r["optimizer"] for r in rows] == ["l2o", "sgd", "adam"]
    assert float(rows[2]["mean_train_loss"]) == pytest.approx(expected[2]["mean_train_loss"])
    data = json.loads(paths["json"].read_text())
    assert data["seeds"] == [1000, 1001, 1002]
    adam = data["optimizers"]["adam"]
    assert torch.allclose(torch.tensor(adam["train_losses"]), rep.curves[2].train_losses)
    assert len(adam["grid"]) == 3 and adam["lr"] == rep.curves[2].lr
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
