"""The design / held-out split: suite roles, the dated log of every held-out run, the shipped
held-out suite's disjointness from meta-training and from ``design``, time-boxed runs that
continue, and the per-length aggregates a held-out table reports."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

import l2o.optimizers as lo
from l2o.tasks import TaskVariation
from meta_train import evaluate as cli
from meta_train.evaluation import heldout_log, runner
from meta_train.evaluation.contenders import resolve_learned
from meta_train.evaluation.suites import load_suite, parse_suite, resolve_cases


def _suite_file(tmp_path, role: str, cases: list[dict]) -> str:
    path = tmp_path / "mini.yaml"
    raw = {"name": "mini", "role": role, "seeds": 2, "tune_seeds": 1, "cases": cases}
    path.write_text(yaml.safe_dump(raw))
    return str(path)


FAST = ["--baselines", "adam", "--lr-range", "1e-2", "1e-1", "--per-decade", "1", "--no-plot"]


def test_roles_are_validated_and_default_to_history():
    case = {"task": "mnist_mlp_relu", "steps": 3}
    assert parse_suite({"cases": [case]}).role == "history"
    assert parse_suite({"role": "heldout", "cases": [case]}).heldout
    with pytest.raises(ValueError, match="role must be one of"):
        parse_suite({"role": "test", "cases": [case]})


def test_shipped_suites_have_the_roles_the_docs_give():
    names = ("design", "heldout", "heldout2", "heldout3", "indist", "long")
    roles = {name: load_suite(name).role for name in names}
    assert roles == {
        "design": "design",
        "heldout": "heldout",
        "heldout2": "heldout",
        "heldout3": "heldout",
        "indist": "history",
        "long": "history",
    }
    assert load_suite("generalization").role == "history"


def _pipelines(name: str) -> set[tuple]:
    suite = load_suite(name)
    trained = ("mnist_mlp_sigmoid", "mnist5k", 200)
    return {(c.task, c.dataset, c.variation) for c in resolve_cases(suite, False, *trained, None)}


@pytest.mark.parametrize("suite", ["heldout", "heldout2", "heldout3"])
def test_heldout_is_disjoint_from_design_and_meta_training_in_tasks_and_pipelines(suite):
    heldout, design = _pipelines(suite), _pipelines("design")
    meta_training = {("mnist_mlp_sigmoid", "mnist5k", TaskVariation())}
    for shipped in ("general", "lstm-mnist", "mlp-mnist"):
        learned = resolve_learned(shipped)
        assert (learned.task, learned.dataset) == ("mnist_mlp_sigmoid", "mnist5k")
    assert {t for t, _, _ in heldout}.isdisjoint({t for t, _, _ in design | meta_training})
    design_settings = {
        (key, value) for _, _, v in design | meta_training for key, value in v.changes().items()
    }
    heldout_settings = {(key, value) for _, _, v in heldout for key, value in v.changes().items()}
    assert heldout_settings.isdisjoint(design_settings), heldout_settings & design_settings


@pytest.mark.parametrize("suite", ["heldout", "heldout2", "heldout3"])
def test_heldout_lengths_are_1x_5x_10x_the_shipped_horizon(suite):
    lengths = {c.steps for c in load_suite(suite).cases}
    assert lengths == {200, 1000, 2000}
    assert resolve_learned("general").horizon == 200


@pytest.mark.parametrize(
    "suite, earlier",
    [
        ("heldout2", ("heldout", "design", "generalization", "indist", "long")),
        ("heldout3", ("heldout", "heldout2", "design", "generalization", "indist", "long")),
    ],
)
def test_a_later_heldout_suite_holds_no_case_of_an_earlier_suite(suite, earlier):
    """Each was fixed before its first run to report what an earlier one's findings chose: none
    of its cases (task, data and pipeline together) was ever evaluated by another suite."""
    assert _pipelines(suite).isdisjoint(set().union(*(_pipelines(name) for name in earlier)))


def test_a_heldout_run_is_logged_with_its_date_commit_and_findings(tmp_path, capsys):
    suite = _suite_file(tmp_path, "heldout", [{"task": "digits_mlp_relu", "steps": 4}])
    out = tmp_path / "out"
    assert cli.main(["mlp-mnist", "--suite", suite, *FAST, "--out", str(out)]) == 0
    assert "HELD-OUT suite" in capsys.readouterr().err
    log = heldout_log.log_path(suite)
    assert log.name == "mini.runs.jsonl"
    started, finished = heldout_log.read_log(log)
    assert started["status"] == "started" and finished["status"] == "finished"
    assert finished["started"] == started["started"] and finished["ended"] >= started["started"]
    assert finished["suite_sha256"] == heldout_log.file_sha256(suite)
    shipped = lo.wrapper.pretrained_path("mlp-mnist")
    assert finished["learned"]["mlp-mnist"]["sha256"] == heldout_log.file_sha256(shipped)
    assert finished["seeds"] == [1000, 1002] and finished["tune_seeds"] == [0, 1]
    (row,) = [s for s in finished["summary"] if s["criterion"] == "final"]
    results = json.loads((out / "results.json").read_text())
    (expected,) = [
        s for s in results["summary"] if s["criterion"] == "final" and s["optimizer"] == "mlp-mnist"
    ]
    assert row["geomean_ratio"] == pytest.approx(expected["geomean_ratio"])
    # a second run appends; the first lines stay as they were
    assert cli.main(["mlp-mnist", "--suite", suite, *FAST, "--out", str(tmp_path / "o2")]) == 0
    assert heldout_log.read_log(log)[:2] == [started, finished]
    assert len(heldout_log.read_log(log)) == 4


def test_a_failed_heldout_run_is_logged_as_failed(tmp_path, monkeypatch):
    suite = _suite_file(tmp_path, "heldout", [{"task": "digits_mlp_relu", "steps": 4}])

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "run_suite", broken)
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["mlp-mnist", "--suite", suite, *FAST, "--out", str(tmp_path / "out")])
    statuses = [e["status"] for e in heldout_log.read_log(heldout_log.log_path(suite))]
    assert statuses == ["started", "failed"]


def test_design_and_history_runs_are_not_logged(tmp_path):
    suite = _suite_file(tmp_path, "design", [{"task": "digits_mlp_relu", "steps": 4}])
    assert cli.main(["--suite", suite, *FAST, "--out", str(tmp_path / "out")]) == 0
    assert not heldout_log.log_path(suite).exists()


def test_the_run_log_is_not_dirt_but_code_is(tmp_path):
    """A second run started while the first one's ``started`` line is uncommitted runs the
    same code: the commit is recorded clean; an edited tracked file makes it ``+dirty``."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    suite = tmp_path / "configs" / "eval" / "heldout.yaml"
    suite.parent.mkdir(parents=True)
    suite.write_text("name: heldout\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    heldout_log.append_entry(heldout_log.log_path(suite), {"status": "finished"})
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    heldout_log.append_entry(heldout_log.log_path(suite), {"status": "started"})
    clean = heldout_log.git_revision(suite.parent)
    assert clean is not None and not clean.endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert heldout_log.git_revision(suite.parent) == clean + "+dirty"


def test_evaluations_side_by_side_lose_no_log_line(tmp_path):
    """Every append reads the log, adds a line and replaces the file: without the lock, two
    writers that read the same old log keep only one of their lines."""
    import threading

    log, start = tmp_path / "eval" / "suite.runs.jsonl", threading.Barrier(8)

    def writer(k: int) -> None:
        start.wait()
        for i in range(5):
            heldout_log.append_entry(log, {"writer": k, "i": i})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = heldout_log.read_log(log)
    assert sorted((e["writer"], e["i"]) for e in entries) == [
        (k, i) for k in range(8) for i in range(5)
    ]


def test_a_corrupt_log_line_is_an_error_naming_the_line(tmp_path):
    log = tmp_path / "x.runs.jsonl"
    log.write_text('{"status": "started"}\n{not json\n')
    with pytest.raises(ValueError, match=r"x\.runs\.jsonl:2: not a JSON line"):
        heldout_log.read_log(log)


def test_a_time_budget_reports_the_finished_cases_and_the_same_command_continues(
    tmp_path, monkeypatch
):
    cases = [{"task": "digits_mlp_relu", "steps": 4}, {"task": "digits_mlp_tanh", "steps": 4}]
    suite = _suite_file(tmp_path, "design", cases)
    out = tmp_path / "out"
    clock = iter(range(0, 10**9, 100))  # every reading of the runner's clock is 100 s later
    fake_time = SimpleNamespace(perf_counter=lambda: float(next(clock)))
    monkeypatch.setattr(runner, "time", fake_time)
    argv = ["--suite", suite, *FAST, "--out", str(out)]
    assert cli.main([*argv, "--time-budget", "2"]) == 0  # 120 s: only the first case starts
    first = json.loads((out / "results.json").read_text())
    assert [c["case"] for c in first["cases"]] == ["digits_mlp_relu@digits:4"]
    assert first["skipped"][0]["case"] == "digits_mlp_tanh@digits:4"
    assert "time budget" in first["skipped"][0]["reason"]
    monkeypatch.undo()
    assert cli.main(argv) == 0  # the same command without the budget: continues
    second = json.loads((out / "results.json").read_text())
    assert [c["case"] for c in second["cases"]] == [
        "digits_mlp_relu@digits:4",
        "digits_mlp_tanh@digits:4",
    ]
    assert second["cases"][0] == first["cases"][0]  # read back, not re-run


def test_a_bad_time_budget_is_refused_before_work(tmp_path, capsys):
    suite = _suite_file(tmp_path, "design", [{"task": "digits_mlp_relu", "steps": 4}])
    assert cli.main(["--suite", suite, *FAST, "--time-budget", "0"]) == 2
    assert "--time-budget must be a positive" in capsys.readouterr().err


def test_the_table_aggregates_each_run_length_separately(tmp_path):
    cases = [{"task": "digits_mlp_relu", "steps": 4}, {"task": "digits_mlp_relu", "steps": 8}]
    suite = _suite_file(tmp_path, "design", cases)
    out = tmp_path / "out"
    assert cli.main(["mlp-mnist", "--suite", suite, *FAST, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    by_steps = {(s["steps"], s["criterion"]): s for s in results["summary_by_steps"]}
    assert set(by_steps) == {(4, "final"), (4, "mean"), (8, "final"), (8, "mean")}
    rows = {(r["steps"], r["criterion"]): r for r in results["rows"] if r["kind"] == "learned"}
    for key, s in by_steps.items():
        assert s["cases"] == 1 and s["geomean_ratio"] == pytest.approx(rows[key]["ratio"])
    assert "4 steps: OVERALL mlp-mnist [final]" in (out / "table.txt").read_text()


def test_sigterm_ends_a_heldout_run_as_interrupted(tmp_path, monkeypatch):
    """A run in the background ignores Ctrl-C; ``kill`` (SIGTERM) must still leave its log
    line, and the handler is the caller's again afterwards."""
    import os
    import signal

    suite = _suite_file(tmp_path, "heldout", [{"task": "digits_mlp_relu", "steps": 4}])

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "run_suite", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["mlp-mnist", "--suite", suite, *FAST, "--out", str(tmp_path / "out")])
    statuses = [e["status"] for e in heldout_log.read_log(heldout_log.log_path(suite))]
    assert statuses == ["started", "interrupted"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_skipped_cases_are_listed_and_the_saved_ones_stay_valid(tmp_path, capsys):
    cases = [{"task": "digits_mlp_relu", "steps": 4}, {"task": "digits_mlp_tanh", "steps": 4}]
    suite = _suite_file(tmp_path, "design", cases)
    out = str(tmp_path / "out")
    args = ["--suite", suite, *FAST, "--out", out]
    assert cli.main([*args, "--skip-cases", "2"]) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["case"] for c in first["skipped"]] == ["digits_mlp_tanh@digits:4"]
    assert len(first["cases"]) == 1
    assert cli.main(args) == 0  # the same evaluation: case 1 read back, case 2 run
    assert "finished before, read back" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["cases"]) == 2
    assert cli.main([*args, "--skip-cases", "3"]) == 2  # no case 3: a usage error
