"""Each figure command runs end to end in its tiny mode and writes PNG + CSV + summary; bad
input fails at once with one line and exit code 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import figures
from analysis.figures import fig5, tuning

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_compile(monkeypatch):
    monkeypatch.setenv("L2O_COMPILE", "0")  # the learned optimizer's first compile costs seconds


@pytest.fixture(scope="module")
def lopt_path(tmp_path_factory):
    """A small learned-optimizer checkpoint, so the tests do not depend on shipped weights."""
    import torch

    from l2o.optimizers import LSTMOptimizer
    from l2o.optimizers.checkpoint_io import save_learned_optimizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lopt") / "lstm.pt"
    return str(save_learned_optimizer(path, LSTMOptimizer(hidden_size=8, output_scale=0.01)))


def _check_outputs(out: Path, fig: str, columns: set[str]) -> list[dict]:
    png, table, summary = out / f"{fig}.png", out / f"{fig}.csv", out / f"{fig}_summary.json"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert rows and columns <= set(rows[0]), set(rows[0])
    data = json.loads(summary.read_text())
    assert data["figure"] == fig and data["mode"] == "tiny" and data["verdict"]
    return rows


def test_fig4_tiny(tmp_path, lopt_path):
    figures.main(["fig4", "--tiny", "--out", str(tmp_path), "--lopt", lopt_path])
    rows = _check_outputs(
        tmp_path, "fig4", {"task", "optimizer", "step", "kind", "update_relative", "loss"}
    )
    names = {r["optimizer"] for r in rows}
    assert {"L2O", "SGD", "Adam", "Lion"} <= names
    assert {r["kind"] for r in rows} == {"rescale", "scale", "translation"}
    # SGD keeps every symmetry, Lion (sign updates) does not
    sgd = [float(r["update_relative"]) for r in rows if r["optimizer"] == "SGD"]
    lion = [float(r["update_relative"]) for r in rows if r["optimizer"] == "Lion"]
    assert max(sgd) < 1e-3 < min(lion)
    assert (tmp_path / "lr_cache.json").exists()


def test_fig7_tiny(tmp_path):
    figures.main(["fig7", "--tiny", "--out", str(tmp_path)])
    rows = _check_outputs(tmp_path, "fig7", {"alpha", "relative_deviation", "final_loss"})
    by_alpha = {float(r["alpha"]): float(r["relative_deviation"]) for r in rows}
    # SGD with momentum breaks them a little (its buffer holds gradients of earlier θ), Lion most
    assert by_alpha[0.0] < by_alpha[0.5] < by_alpha[1.0]


def test_fig8_tiny(tmp_path, lopt_path):
    figures.main(["fig8", "--tiny", "--out", str(tmp_path), "--lopt", lopt_path])
    rows = _check_outputs(
        tmp_path, "fig8", {"optimizer", "step", "alpha_grad_pooled", "alpha_update_pooled"}
    )
    # SGD's update noise is −lr × the gradient noise: same tail index (scale-free estimator)
    for r in rows:
        if r["optimizer"] == "SGD":
            assert float(r["alpha_update_pooled"]) == pytest.approx(
                float(r["alpha_grad_pooled"]), rel=1e-4
            )


def test_fig9_tiny(tmp_path, lopt_path):
    figures.main(["fig9", "--tiny", "--out", str(tmp_path), "--lopt", lopt_path])
    rows = _check_outputs(tmp_path, "fig9", {"optimizer", "step", "bin_low", "fraction"})
    assert {r["optimizer"] for r in rows} == {"L2O", "SGD", "Adam", "muon", "sf_adamw"}
    summary = json.loads((tmp_path / "fig9_summary.json").read_text())
    low, high = summary["median_abs_update_ci95"]["Adam"]["1"]  # tiny runs 2 seeds
    assert low <= high and summary["seeds"] == 2


@pytest.mark.slow
def test_fig5_tiny_runs_meta_training_through_the_cli(tmp_path):
    """fig5 meta-trains through ``python meta_train/run.py`` (analysis never imports it)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "figures.py"),
            "fig5",
            "--tiny",
            "--out",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _check_outputs(tmp_path, "fig5", {"reg_mul", "step", "loss", "relative_deviation"})
    assert {float(r["reg_mul"]) for r in rows} == set(fig5.SETTINGS["tiny"].reg_muls)
    for reg_mul in fig5.SETTINGS["tiny"].reg_muls:
        assert (tmp_path / f"fig5_runs/reg_mul={reg_mul:g}/best.pt").exists()


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        figures.main(["fig6", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        figures.main(["fig4", "--quick", "--tiny"])


@pytest.mark.parametrize("content", [None, b"not a checkpoint"])
def test_bad_lopt_fails_before_any_baseline_work(tmp_path, monkeypatch, capsys, content):
    def no_tuning(*args, **kwargs):
        raise AssertionError("a baseline was tuned before --lopt was checked")

    monkeypatch.setattr(tuning, "grid_search_lr", no_tuning)
    lopt = tmp_path / "missing.pt"
    if content is not None:
        lopt.write_bytes(content)
    out = tmp_path / "out"
    assert figures.main(["fig4", "--tiny", "--out", str(out), "--lopt", str(lopt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --lopt {lopt}") and err.count("\n") == 1, err
    assert ("no such checkpoint file" if content is None else "not a loadable") in err
    assert not out.exists()


@pytest.mark.parametrize("launcher", [["analysis/figures.py"], ["-m", "analysis.figures"]])
def test_command_lines_report_a_missing_lopt_with_exit_code_2(tmp_path, launcher):
    """Both documented ways to run the figures reach the same command line."""
    proc = subprocess.run(
        [
            sys.executable,
            *launcher,
            "all",
            "--tiny",
            "--out",
            str(tmp_path),
            "--lopt",
            "missing.pt",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: --lopt missing.pt: no such checkpoint")
    assert not any(tmp_path.iterdir())
