"""``python analysis/figures.py redraw``: every figure drawn again from its files alone (CSV,
summary, ``lr_cache.json``), never recomputed; absent figures skipped with a line, bad files
one-line errors naming them; legends carry the baselines' tuned learning rates."""

from __future__ import annotations

import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import pytest

from analysis import figures
from analysis.figures import cli, fig8, plots
from analysis.figures.output import write_csv, write_summary
from analysis.figures.runs import task_for
from analysis.figures.tuning import LrCache, Tuning, cache_key

pytest.importorskip("matplotlib")

FIGS = ("fig4", "fig5", "fig7", "fig8", "fig9")
TASK4 = "mnist_mlp_relu_bn"
TUNING = Tuning(lr_grid=(0.01, 0.1), steps=3, seeds=1)
LRS = {"sgd": 0.1, "adam": 0.003, "lion": 0.0001, "muon": 0.02}
SEEDS = (100, 101)
MAX_PNG_BYTES = 150_000


def settings(**extra) -> dict:
    return {
        "dataset": "mnist5k",
        "tuning": {"lr_grid": [0.01, 0.1], "steps": 3, "seeds": 1},
        **extra,
    }


def fig4_rows() -> list[dict]:
    scale = {"L2O": 5.0, "SGD": 1e-7, "Adam": 0.5, "Lion": 50.0, "gyro_adam": 1.0}
    return [
        {
            "task": TASK4,
            "optimizer": name,
            "seed": seed,
            "step": t,
            "kind": kind,
            "update_magnitude": s * (1 + 0.1 * (seed - 100)) * (t + 1),
            "update_relative": min(s, 0.9) / (t + 2),
            "gradient_magnitude": 1e-8 * (t + 1),
            "gradient_relative": 1e-7,
            "loss": 2.3 / (t + 1) + 0.01 * (seed - 100),
        }
        for name, s in scale.items()
        for kind in ("rescale", "scale")
        for seed in SEEDS
        for t in range(6)
    ]


def fig5_rows() -> list[dict]:
    return [
        {
            "reg_mul": reg_mul,
            "seed": seed,
            "step": t,
            "loss": 2.0 - 0.1 * t + reg_mul,
            "relative_deviation": 0.5 - 0.2 * reg_mul,
            "magnitude_deviation": 10.0 / (1 + 100 * reg_mul) * (t + 1),
            "test_loss": 1.5 + reg_mul,
        }
        for reg_mul in (0.0, 1.0)
        for seed in SEEDS
        for t in range(6)
    ]


def fig7_rows() -> list[dict]:
    return [
        {
            "alpha": alpha,
            "seed": seed,
            "final_loss": 1.0 - 0.5 * alpha + 0.02 * (seed - 100),
            "mean_loss": 1.5,
            "test_loss": 1.1 - 0.5 * alpha,
            "test_acc": 0.7,
            "relative_deviation": 0.1 + 0.3 * alpha + 0.01 * (seed - 100),
        }
        for alpha in (0.0, 0.5, 1.0)
        for seed in SEEDS
    ]


def fig8_rows() -> list[dict]:
    rows = []
    for name in ("L2O", "SGD", "Adam", "Lion", "muon"):
        for seed in SEEDS:
            for step in (1, 10):
                row = {"optimizer": name, "seed": seed, "step": step}
                for pooling in ("pooled", "standardized"):
                    row[f"alpha_grad_{pooling}"] = 1.2 + 0.1 * (seed - 100)
                    # Lion's ±lr updates: no α-stable reading
                    row[f"alpha_update_{pooling}"] = math.nan if name == "Lion" else 1.6
                row["cov_trace_update"] = {"SGD": 1e-3, "Lion": 9.0}.get(name, 0.5) * step
                row["cov_trace_rel_update"] = 0.2 + 0.01 * step
                rows.append(row)
    return rows


def fig9_rows() -> list[dict]:
    edges = [10.0**e for e in range(-6, 0)]
    return [
        {
            "optimizer": name,
            "step": step,
            "bin_low": edges[b],
            "bin_high": edges[b + 1],
            "fraction": [0.1, 0.2, 0.4, 0.2, 0.1][(b + i) % 5],
            "fraction_zero": 0.02 if name == "SGD" else 0.0,
            "median_abs_update": edges[2 + i % 2],
        }
        for i, name in enumerate(("L2O", "SGD", "Adam"))
        for step in (0, 5)
        for b in range(5)
    ]


SYNTHETIC = {
    "fig4": (fig4_rows, {}, settings(steps=6, seeds=2)),
    "fig5": (fig5_rows, {}, {"dataset": "mnist5k", "steps": 6, "seeds": 2}),
    "fig7": (
        fig7_rows,
        {
            "lr_sgd": 0.1,
            "lr_lion": 0.0001,
            "learning_rates": "tuned",
            "spearman_deviation_vs_final_loss": -1.0,
        },
        settings(steps=12, seeds=2),
    ),
    "fig8": (fig8_rows, {}, settings(probe_steps=[1, 10], probe_batches=8, seeds=2)),
    "fig9": (fig9_rows, {}, settings(hist_steps=[0, 5], seed=100)),
}


def write_synthetic(folder: Path, figs=FIGS) -> Path:
    """A figures folder as a run leaves it (no PNGs): CSVs, summaries and the lr cache."""
    for fig in figs:
        make_rows, summary, fig_settings = SYNTHETIC[fig]
        write_csv(folder / f"{fig}.csv", make_rows())
        summary = {**summary, "verdict": "synthetic"}
        write_summary(
            folder / f"{fig}_summary.json", fig, "tiny", "lstm-mnist", summary, fig_settings
        )
    cache = LrCache(folder / "lr_cache.json")
    for task in (TASK4, fig8.TASK):
        for name, lr in LRS.items():
            cache.put(cache_key(task_for(task, "mnist5k"), name, TUNING, {}), lr)
    return folder


@pytest.fixture
def no_compute(monkeypatch):
    """Any figure computation fails the test: a redraw must draw from the files only."""

    def refuse(*args, **kwargs):
        raise AssertionError("redraw recomputed a figure")

    for module, _ in cli.FIGURES.values():
        monkeypatch.setattr(module, "compute", refuse)


@pytest.fixture
def drawn(monkeypatch) -> dict[str, dict]:
    """What each saved figure shows in its legends and title, by figure name."""
    texts: dict[str, dict] = {}
    save = plots.save_png

    def capture(fig, path):
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
        texts[Path(path).stem] = {
            "legend": [t.get_text() for leg in legends if leg for t in leg.get_texts()],
            "title": fig.get_suptitle(),
        }
        return save(fig, path)

    monkeypatch.setattr(plots, "save_png", capture)
    return texts


def test_redraw_draws_every_figure_from_its_files_alone(tmp_path, no_compute, drawn, capsys):
    write_synthetic(tmp_path)
    assert figures.main(["redraw", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for fig in FIGS:
        png = tmp_path / f"{fig}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert 5_000 < png.stat().st_size <= MAX_PNG_BYTES, (fig, png.stat().st_size)
        assert f"{fig}: redrawn from {fig}.csv" in out
    # legends name each baseline's tuned learning rate; learned optimizers have none
    for fig in ("fig4", "fig8", "fig9"):
        assert "SGD (lr 0.1)" in drawn[fig]["legend"] and "Adam (lr 0.003)" in drawn[fig]["legend"]
        assert "L2O" in drawn[fig]["legend"]
    assert "Lion (lr 0.0001)" in drawn["fig4"]["legend"]
    assert "gyro_adam" in drawn["fig4"]["legend"]  # no grid search cached for it: no lr shown
    assert "muon (lr 0.02)" in drawn["fig8"]["legend"]
    assert "lr 0.1, Lion part lr 0.0001 (tuned" in drawn["fig7"]["title"].replace("\n", " ")
    # titles say what is shown and how: task, dataset, steps, seeds
    assert f"{TASK4} on mnist5k; 6 steps; mean of 2 seeds" in drawn["fig4"]["title"]
    assert "L2O = --lopt lstm-mnist" in drawn["fig4"]["title"].replace("\n", " ")
    assert "reg_mul = 0 (none), test loss 1.5" in drawn["fig5"]["legend"]


def test_titles_name_the_data_the_runs_trained_on(tmp_path, no_compute, drawn):
    """A figure whose task asked for full MNIST but trained on the mnist5k fallback says so."""
    write_synthetic(tmp_path, figs=("fig9",))
    path = tmp_path / "fig9_summary.json"
    summary = json.loads(path.read_text())
    summary["settings"]["dataset"] = "mnist"
    summary["data_used"] = {fig8.TASK: "mnist5k"}
    path.write_text(json.dumps(summary))
    assert figures.main(["redraw", "--out", str(tmp_path)]) == 0
    assert f"{fig8.TASK} on mnist5k" in drawn["fig9"]["title"]


def test_absent_figures_are_skipped_with_a_line(tmp_path, no_compute, capsys):
    write_synthetic(tmp_path, figs=("fig7",))
    assert figures.main(["redraw", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "fig7.png").exists() and not (tmp_path / "fig4.png").exists()
    assert f"fig4: skipped (no {tmp_path / 'fig4.csv'})" in out.splitlines()


def _rewrite(path: Path, change) -> None:
    path.write_text(change(path.read_text()))


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("fig7.csv", lambda t: t.replace("relative_deviation", "deviation"), "no column"),
        ("fig7.csv", lambda t: t.replace("0.0,100,", "zero,100,", 1), "'zero' is not a number"),
        ("fig7.csv", lambda t: t + "1.0,100\n", "another number of fields"),
        ("fig7.csv", lambda t: "", "no column"),
        ("fig7.csv", lambda t: t.splitlines()[0] + "\n", "no rows"),
        ("fig7_summary.json", lambda t: t[:-3], "cannot be read as JSON"),
        ("fig7_summary.json", lambda t: t.replace('"lr_lion"', '"lr_x"'), "no key 'lr_lion'"),
        ("fig7_summary.json", lambda t: t.replace('"fig7"', '"fig8"', 1), "not the summary"),
        ("lr_cache.json", lambda t: "{", "cannot be read"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path, no_compute, capsys, name, change, message):
    write_synthetic(tmp_path, figs=("fig7", "fig9"))
    _rewrite(tmp_path / name, change)
    figures_that_read_it = ("fig9",) if name == "lr_cache.json" else ("fig7",)
    assert figures.main(["redraw", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / name}: "), err
    assert message in err
    for fig in ("fig7", "fig9"):  # the other figure is still drawn
        assert (tmp_path / f"{fig}.png").exists() == (fig not in figures_that_read_it)


def test_a_missing_summary_is_named(tmp_path, no_compute, capsys):
    write_synthetic(tmp_path, figs=("fig9",))
    (tmp_path / "fig9_summary.json").unlink()
    assert figures.main(["redraw", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    summary = tmp_path / "fig9_summary.json"
    assert err == f"error: {summary}: missing (the figure's CSV is there, its summary is not)\n"


@pytest.mark.parametrize("make", [False, True])
def test_nothing_to_redraw_is_an_error(tmp_path, capsys, make):
    folder = tmp_path / "figures"
    if make:
        folder.mkdir()
    assert figures.main(["redraw", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    reason = "no figure's CSV (figN.csv) to redraw" if make else "no such folder"
    assert err == f"error: {folder}: {reason}\n"


def test_redraw_without_matplotlib_says_how_to_get_it(tmp_path, no_compute, monkeypatch, capsys):
    write_synthetic(tmp_path, figs=("fig7",))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert figures.main(["redraw", "--out", str(tmp_path)]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """``figures.py all --tiny`` with the default --lopt (lstm-paper as L2O, and general)."""
    out = tmp_path_factory.mktemp("figures")
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.setenv("L2O_COMPILE", "0")
        # every learned optimizer is told its runs' length, probes included (figure 8 probes the
        # update after its last step): stepping past the horizon would be a figure's bug
        warnings.filterwarnings("error", message=".*past this learned optimizer's horizon")
        assert figures.main(["all", "--tiny", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_redraw_of_a_tiny_run_gives_the_runs_pictures(tiny_run, tmp_path, no_compute, drawn):
    """The run draws through the redraw's code: redrawn PNGs are byte for byte the run's."""
    folder = tmp_path / "copy"
    shutil.copytree(tiny_run, folder, ignore=shutil.ignore_patterns("*.png"))
    assert figures.main(["redraw", "--out", str(folder)]) == 0
    cache = LrCache(tiny_run / "lr_cache.json")
    sgd_lr = cache.get(cache_key(task_for(fig8.TASK, "mnist5k"), "sgd", TUNING, {}))
    assert sgd_lr is not None and f"SGD (lr {sgd_lr:.3g})" in drawn["fig9"]["legend"]
    for fig in FIGS:
        run_png = (tiny_run / f"{fig}.png").read_bytes()
        assert len(run_png) <= MAX_PNG_BYTES
        assert (folder / f"{fig}.png").read_bytes() == run_png, fig
