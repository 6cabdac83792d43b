"""The evaluation never loses finished work and refuses bad input before any: a baseline that
diverges everywhere is recorded, not raised; finished cases are saved one by one and a re-run
continues from them; every bad argument, suite or output folder is one line and exit 2 before
the first training run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import l2o.optimizers as lo
from meta_train import evaluate as cli
from meta_train.evaluation import runner
from meta_train.evaluation.contenders import Learned
from meta_train.evaluation.partial import FILE, OUTPUT_FILES, CaseStore
from meta_train.evaluation.report import write_outputs
from meta_train.evaluation.runner import run_suite
from meta_train.evaluation.suites import parse_suite
from meta_train.evaluation.tuning import LogGrid, tune

FAST = LogGrid(1e-2, 1e-1, per_decade=1, max_widenings=0)  # two lrs, no widening


def _suite(cases: list[dict], **extra) -> dict:
    return {"name": "tiny", "seeds": 2, "tune_seeds": 1, **extra, "cases": cases}


def _suite_file(tmp_path, cases: list[dict], **extra) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(_suite(cases, **extra)))
    return str(path)


@pytest.fixture
def no_training(monkeypatch):
    """Any training run fails the test: the refusals must come before the first case."""

    def refuse(*args, **kwargs):
        raise AssertionError("an optimizee was trained before the input was refused")

    monkeypatch.setattr(runner, "train_optimizee", refuse)


def _refused(capsys, argv: list[str], fragment: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err, err


# --------------------------------------------------------------------------------------------
# A baseline that diverges at every lr (item 3)


def test_divergence_everywhere_widens_downward_then_is_recorded():
    nan = lambda lr, seed: torch.full((5,), math.nan)
    (t,) = tune(nan, ["mean"], [0], LogGrid(1e-2, 1.0, max_widenings=2)).values()
    assert t.diverged and math.isnan(t.lr)
    assert t.grid[0].lr == pytest.approx(1e-4)  # two decades lower, then given up
    assert [n.split(":")[0] for n in t.notes[:2]] == [
        "every lr in [0.01, 1] diverged",
        "every lr in [0.001, 1] diverged",
    ]
    assert t.notes[-1] == "diverged at every lr in [0.0001, 1]"
    low_only = lambda lr, seed: torch.full((5,), 1.0 + lr if lr < 1e-3 else math.nan)
    (found,) = tune(low_only, ["final"], [0], LogGrid(1e-2, 1.0)).values()
    assert not found.diverged and found.lr < 1e-3  # widening downward found it


def test_a_baseline_diverging_at_every_lr_does_not_abort_the_evaluation(tmp_path, capsys):
    """``--baselines sgdm,adam --lr-range 1e20 1e30``: SGD diverges even 4 decades lower and is
    recorded so; Adam (whose step does not grow with the gradient) is tuned and reported."""
    suite = _suite_file(tmp_path, [{"task": "mnist_mlp_relu", "steps": 4}])
    out = tmp_path / "out"
    argv = [*("--suite", suite, "--baselines", "sgdm,adam", "--lr-range", "1e20", "1e30")]
    assert cli.main([*argv, "--per-decade", "1", "--out", str(out), "--no-plot"]) == 0
    payload = json.loads((out / "results.json").read_text())
    sgdm = payload["cases"][0]["baselines"]["sgdm"]
    for criterion in ("final", "mean"):
        tuning = sgdm["tuning"][criterion]
        assert tuning["lr"] is None
        assert tuning["notes"][-1] == "diverged at every lr in [1e+16, 1e+30]"
        assert all(point["diverged_runs"] == 1 for point in tuning["grid"])
    assert sgdm["runs"] == {}  # no evaluation run at an lr that does not exist
    rows = {(r["optimizer"], r["criterion"]): r for r in payload["rows"]}
    assert rows["sgdm", "final"]["seeds"] == 0 and rows["sgdm", "final"]["value"] is None
    assert rows["adam", "final"]["seeds"] == 2 and rows["adam", "final"]["best_baseline"] == "adam"
    table = (out / "table.txt").read_text()
    assert "diverged at every lr in [1e+16, 1e+30]" in table
    assert any(line.split()[:2] == ["sgdm", "diverged"] for line in table.splitlines())


# --------------------------------------------------------------------------------------------
# Every bad input: one line, exit 2, before any work and any output (items 4, 9)


def test_an_unwritable_out_is_refused_before_the_first_case(tmp_path, capsys, no_training):
    suite = _suite_file(tmp_path, [{"task": "mnist_mlp_relu", "steps": 4}])
    base = ["--suite", suite, "--baselines", "adam"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(capsys, [*base, "--out", str(afile)], "is a file")
    _refused(capsys, [*base, "--out", str(afile / "sub")], f"{afile} is a file")
    (tmp_path / "out" / "results.json").mkdir(parents=True)
    _refused(capsys, [*base, "--out", str(tmp_path / "out")], "results.json is a folder")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--seeds", "-1"], "seeds must be a positive number of seeds, got -1"),
        (["--seeds", "0"], "seeds must be a positive number of seeds, got 0"),
        (["--tune-seeds", "0"], "tune_seeds must be a positive number of seeds, got 0"),
        (["--lr-range", "1e-3", "inf"], "finite 0 < lo < hi"),
        (["--lr-range", "nan", "1"], "finite 0 < lo < hi"),
        (["--per-decade", "0"], "per_decade must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_work(tmp_path, capsys, no_training, args, fragment):
    suite = _suite_file(tmp_path, [{"task": "mnist_mlp_relu", "steps": 4}])
    out = tmp_path / "out"
    _refused(capsys, ["--suite", suite, "--baselines", "adam", "--out", str(out), *args], fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cases:\n  - {task: trained, horizon: .inf}\n", "positive finite multiple, got inf"),
        ("cases:\n  - {task: trained, horizon: .nan}\n", "positive finite multiple, got nan"),
        ("cases:\n  - {task: trained, horizon: [1, 2\n", "not valid YAML: "),
        ("seeds: 3\nseeds: 4\ncases:\n  - {task: trained, horizon: 1}\n", "'seeds' is given twice"),
        ("cases:\n  - {task: trained, horizon: 0.001}\n", "rounds to 0 steps"),
        (
            "cases:\n  - {task: trained, horizon: 1, quick: false}\n",
            "no case for --quick: every case is marked quick: false",
        ),
    ],
)
def test_bad_suites_are_refused_before_work(tmp_path, capsys, no_training, text, fragment):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    argv = ["mlp-mnist", "--suite", str(path), "--out", str(out), "--quick"]
    _refused(capsys, argv, fragment)
    assert not out.exists()


def test_a_suite_path_that_is_a_folder_is_refused(tmp_path, capsys, no_training):
    _refused(capsys, ["--suite", str(tmp_path)], "is a folder; give a YAML file or a suite name")
    (tmp_path / "x.yaml").mkdir()
    _refused(capsys, ["--suite", str(tmp_path / "x.yaml")], "is a folder")
    _refused(capsys, ["--suite", str(tmp_path / "absent.yaml")], "does not exist")


def test_a_text_file_given_as_the_optimizer_is_refused(tmp_path, capsys, no_training):
    config = tmp_path / "config.yaml"
    config.write_text("task:\n  name: mnist_mlp_relu\n")
    _refused(capsys, [str(config), "--out", str(tmp_path / "out")], "it is a text file")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Finished cases are never lost (the "Done when")


TWO_CASES = parse_suite(
    _suite([{"task": "mnist_mlp_relu", "steps": 5}, {"task": "mnist_mlp_sigmoid", "steps": 4}])
)


def _learned() -> Learned:
    torch.manual_seed(0)
    net = lo.create("lstm", hidden_size=4, output_scale=0.1)
    return Learned("l2o", net, "memory", None, None, None)


def _evaluate(progress, **kwargs):
    return run_suite(
        [_learned()],
        TWO_CASES,
        baselines=["adam"],
        grid=FAST,
        log=lambda _: None,
        progress=progress,
        **kwargs,
    )


def _same(a, b) -> None:
    """Two evaluations with the same numbers, case by case."""
    assert [c.case for c in a.cases] == [c.case for c in b.cases]
    for x, y in zip(a.cases, b.cases, strict=True):
        assert torch.equal(x.learned["l2o"].losses, y.learned["l2o"].losses)
        assert x.baselines["adam"].tunings == y.baselines["adam"].tunings
        for lr, runs in x.baselines["adam"].runs.items():
            torch.testing.assert_close(
                runs.losses, y.baselines["adam"].runs[lr].losses, rtol=0, atol=0, equal_nan=True
            )
            assert runs.test_loss == y.baselines["adam"].runs[lr].test_loss


def test_a_failure_in_a_later_case_keeps_the_finished_ones_and_a_rerun_continues(
    tmp_path, monkeypatch
):
    whole = _evaluate(CaseStore(tmp_path / "whole"))
    real = runner.train_optimizee
    calls = []

    def failing(task, *args, **kwargs):  # the second case dies (a crash, a kill)
        if task.name == "mnist_mlp_sigmoid":
            raise RuntimeError("killed")
        calls.append(task.name)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(runner, "train_optimizee", failing)
    with pytest.raises(RuntimeError, match="killed"):
        _evaluate(CaseStore(tmp_path / "cut"))
    assert (tmp_path / "cut" / FILE).is_file() and calls  # the first case was saved

    def counting(task, *args, **kwargs):
        calls.append(task.name)
        return real(task, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(runner, "train_optimizee", counting)
    resumed = _evaluate(CaseStore(tmp_path / "cut"))
    assert set(calls) == {"mnist_mlp_sigmoid"}  # the finished case was read, not re-run
    _same(resumed, whole)
    calls.clear()
    _evaluate(CaseStore(tmp_path / "cut"))  # everything finished: nothing trains again
    assert calls == []


def test_another_evaluation_in_the_same_folder_is_refused_or_restarted(tmp_path, monkeypatch):
    _evaluate(CaseStore(tmp_path))
    with pytest.raises(ValueError, match=r"another evaluation \(it differs in seeds\)"):
        _evaluate(CaseStore(tmp_path), seeds=3)
    with pytest.raises(ValueError, match=r"differs in learned"):
        other = _learned()
        with torch.no_grad():
            next(other.net.parameters()).add_(1.0)
        run_suite([other], TWO_CASES, baselines=["adam"], grid=FAST, progress=CaseStore(tmp_path))
    restarted = _evaluate(CaseStore(tmp_path, restart=True), seeds=3)
    assert restarted.seeds == [1000, 1001, 1002]
    replaced = _evaluate(CaseStore(tmp_path, replace_other=True))  # as a run's meta-test does
    assert replaced.seeds == [1000, 1001]
    (tmp_path / FILE).write_text("not a progress file")
    with pytest.raises(ValueError, match="is not an evaluation's progress file"):
        _evaluate(CaseStore(tmp_path))


def test_the_cli_continues_with_the_same_arguments_and_refuses_others(tmp_path, capsys):
    suite = _suite_file(tmp_path, [{"task": "mnist_mlp_relu", "steps": 4}])
    out = tmp_path / "out"
    argv = ["--suite", suite, "--baselines", "adam", "--lr-range", "0.01", "0.1", "--no-plot"]
    argv += ["--per-decade", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "finished before, read back" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["rows"] == first["rows"]
    _refused(capsys, [*argv, "--seeds", "3"], "differs in seeds")
    assert cli.main([*argv, "--seeds", "3", "--restart"]) == 0
    assert json.loads((out / "results.json").read_text())["seeds"] == [1000, 1001, 1002]


def test_every_output_file_is_checked_before_the_work(tmp_path):
    ev = _evaluate(None)
    paths = write_outputs(ev, tmp_path)
    assert {p.name for p in paths.values()} <= set(OUTPUT_FILES)


def test_outputs_that_cannot_be_written_after_the_work_keep_the_finished_cases(
    tmp_path, capsys, monkeypatch
):
    suite = _suite_file(tmp_path, [{"task": "mnist_mlp_relu", "steps": 4}])
    out = tmp_path / "out"
    argv = ["--suite", suite, "--baselines", "adam", "--lr-range", "0.01", "0.1", "--no-plot"]
    argv += ["--per-decade", "1", "--out", str(out)]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "results.json"))

    monkeypatch.setattr(cli, "write_outputs", disk_full)
    assert cli.main(argv) == 74
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot write the outputs") and "No space left" in err
    assert "run the same command again" in err and (out / FILE).is_file()
    monkeypatch.setattr(CaseStore, "save", disk_full)  # saving a finished case fails
    assert cli.main([*argv, "--restart"]) == 74
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: cannot save a finished case") and "No space left" in err


@pytest.mark.slow
def test_kill_9_mid_evaluation_then_the_same_command_finishes_with_the_same_numbers(tmp_path):
    """A real ``kill -9`` while the second case runs: the first is in the progress file; the
    same command reads it back, runs the second, and the table's numbers equal an
    uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    cases = [{"task": "mnist_mlp_relu", "steps": 5}, {"task": "mnist_mlp_sigmoid", "steps": 300}]
    suite = _suite_file(tmp_path, cases)

    def command(out):
        argv = ["--suite", suite, "--baselines", "adam", "--lr-range", "0.01", "0.1"]
        argv += ["--per-decade", "1", "--no-plot", "--out", str(out)]
        return [sys.executable, "meta_train/evaluate.py", *argv]

    env = {**os.environ, "WANDB_MODE": "disabled"}
    run = lambda out: subprocess.run(
        command(out), cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    proc = subprocess.Popen(command(tmp_path / "cut"), cwd=root, env=env, stderr=subprocess.DEVNULL)
    progress = tmp_path / "cut" / FILE
    while not progress.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the evaluation ended before it could be killed"
    saved = torch.load(progress, weights_only=True)["cases"]
    assert list(saved) == ["mnist_mlp_relu@mnist:5"]
    again = run(tmp_path / "cut")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "mnist_mlp_relu@mnist:5: finished before, read back" in again.stderr
    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    numbers = lambda out: [
        {k: r[k] for k in ("case", "criterion", "optimizer", "lr", "value", "test_loss")}
        for r in json.loads((out / "results.json").read_text())["rows"]
    ]
    assert numbers(tmp_path / "cut") == numbers(tmp_path / "whole")
    assert len({r["case"] for r in numbers(tmp_path / "whole")}) == 2
