"""A local sweep after a kill, SIGTERM, a lost or damaged study.db: its trials die with it, a
re-run waits for a folder still in use instead of failing the trial, a trial folder is continued
only by the trial whose config made it, and a damaged study is one clear error."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from sweep_fakes import command_config, fake_execute, fake_metric, write_checkpoint

from meta_train.sweep import main
from meta_train.sweeps import engine as sweep_module
from meta_train.sweeps import spec as sweep_spec
from meta_train.sweeps.engine import LocalSweep
from meta_train.sweeps.process import folder_holder
from meta_train.sweeps.spec import PROGRAM, load_sweep
from meta_train.training import checkpointing as ckpt

ROOT = Path(__file__).resolve().parents[3]
TESTS = Path(__file__).resolve().parent
TINY = ["--config", "tiny", "meta_test.enabled=false", "threads=1"]


def _sweep_file(tmp_path: Path, method: str = "grid", extra: tuple[str, ...] = ()) -> Path:
    lr = (
        {"values": [0.001, 0.01, 0.1]}
        if method == "grid"
        else {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}
    )
    sweep = {
        "program": PROGRAM,
        "method": method,
        "metric": {"name": "val/best_loss", "goal": "minimize"},
        "parameters": {"meta_optimizer.lr": lr},
        "command": ["${env}", "${interpreter}", "${program}", *TINY, *extra, "${args}"],
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _ranking(folder: Path) -> list[dict]:
    with open(folder / "ranking.csv") as f:
        return list(csv.DictReader(f))


def _scores(folder: Path) -> list[tuple[str, str, str]]:
    return [(r["meta_optimizer.lr"], r["val/best_loss"], r["state"]) for r in _ranking(folder)]


def _processes_mentioning(text: str) -> list[int]:
    """The live processes whose command line contains ``text`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until_no_process_mentions(text: str, timeout: float = 60.0) -> list[int]:
    """Poll until no live process names ``text``; the ones left then (killed, for cleanup)."""
    deadline = time.monotonic() + timeout
    while (left := _processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


# --------------------------------------------------------------------------------------------
# Item 1: a killed sweep's trial dies with it; a re-run waits for a folder still in use


def _launch_sweep(path: Path, folder: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "meta_train/sweep.py", str(path), "--sweep-dir", str(folder), *args],
        cwd=ROOT,
        env={**os.environ, "WANDB_MODE": "disabled", "L2O_NATIVE": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the test's signal reaches the sweep alone, as `kill PID` does
        preexec_fn=_as_in_a_terminal,
    )


def _as_in_a_terminal() -> None:
    """SIGINT at its default in the sweep, as in a terminal's foreground job. pytest started in
    the background (`pytest &`, nohup) has SIGINT ignored, a disposition children inherit and
    Python then keeps (no KeyboardInterrupt): the ctrl-c case would wait for a trial of many
    minutes."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_trial(process: subprocess.Popen, run_dir: Path) -> None:
    """Until run.py holds ``run_dir`` (the trial is running)."""
    while folder_holder(run_dir) is None:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill-9", "term", "ctrl-c"]
)
def test_a_killed_sweeps_trial_dies_with_it(tmp_path, sig):
    path = _sweep_file(tmp_path, extra=("schedule.epochs=1000",))  # a trial of many minutes
    folder = tmp_path / "sweep"
    process = _launch_sweep(path, folder)
    try:
        _wait_for_trial(process, folder / "trials" / "0000")
        process.send_signal(sig)
        code = process.wait(timeout=120)
    finally:
        left = wait_until_no_process_mentions(str(folder))
        if process.poll() is None:
            process.kill()
    assert left == [], "the trial outlived its sweep"
    if sig != signal.SIGKILL:  # the sweep stopped its trial and says how to continue
        how = "terminated" if sig == signal.SIGTERM else "interrupted"
        assert code == (143 if sig == signal.SIGTERM else 130)
        assert f"{how}; run the same command" in process.stderr.read()


def _running_trial(path: Path, folder: Path) -> tuple[LocalSweep, dict, Path]:
    """The study a sweep killed mid-trial leaves: trial 0 RUNNING with its point and folder."""
    local = LocalSweep(load_sweep(path), path.stem, folder)
    study = local.open_study()
    trial = study.ask()
    values = sweep_spec.suggest(trial, local.parameters)
    run_dir = local.run_dir(trial.number)
    trial.set_user_attr("values", values)
    trial.set_user_attr("run_dir", str(run_dir))
    return local, values, run_dir


ORPHAN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from sweep_fakes import fake_run
    from meta_train.training import checkpointing as ckpt
    run_dir, go = Path(sys.argv[2]), Path(sys.argv[3])
    config = json.loads(sys.argv[4])
    with ckpt.RunLock(run_dir):
        print("orphan: training", flush=True)
        for _ in range(2400):  # until the sweep waits for it (at most 2 minutes)
            if go.exists():
                break
            time.sleep(0.05)
        fake_run(run_dir, config)
        print("orphan: done", flush=True)
    """
)


def test_a_rerun_waits_for_a_trial_still_running_and_reads_its_result(
    tmp_path, monkeypatch, capsys
):
    """The orphan of a killed sweep still holds its trial's folder: the re-run waits for it and
    continues its checkpoint (the trial is not failed with run.py's exit 75), and the attempt's
    log is its own."""
    path, folder = _sweep_file(tmp_path), tmp_path / "sweep"
    local, values, run_dir = _running_trial(path, folder)
    cfg = local.trial_config(values)
    cfg.run_dir = str(run_dir)
    run_dir.mkdir(parents=True)
    first_log = run_dir.parent / f"{run_dir.name}.attempt-1.log"
    go = tmp_path / "go"
    with open(first_log, "w") as log:  # the orphan writes the log its sweep gave it
        config = json.dumps(cfg.to_dict())
        orphan = subprocess.Popen(
            [sys.executable, "-c", ORPHAN, str(TESTS), str(run_dir), str(go), config],
            cwd=ROOT,
            stdout=log,
        )
    try:
        while folder_holder(run_dir) is None:
            assert orphan.poll() is None
            time.sleep(0.02)
        real_wait = sweep_module.wait_for_run_folder

        def wait_and_let_the_orphan_finish(folder_in_use, note):
            def noted(text):
                note(text)
                go.touch()

            real_wait(folder_in_use, noted)

        monkeypatch.setattr(sweep_module, "wait_for_run_folder", wait_and_let_the_orphan_finish)
        monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls := []))
        assert main([str(path), "--sweep-dir", str(folder)]) == 0
    finally:
        orphan.kill()
        orphan.wait()
    out = capsys.readouterr().out
    assert "is in use by PID" in out and "waiting for it to end" in out
    assert calls[0][-2:] == ["--resume", str(run_dir)]  # the orphan's checkpoint, continued
    rows = {r["run_dir"]: r for r in _ranking(folder)}
    row = rows[str(run_dir)]
    assert row["state"] == "complete" and row["error"] == ""
    assert float(row["val/best_loss"]) == fake_metric(values["meta_optimizer.lr"])
    assert "orphan: done" in first_log.read_text()
    own_log = run_dir.parent / f"{run_dir.name}.attempt-2.log"
    assert "orphan" not in own_log.read_text() and "fake run" in own_log.read_text()


def test_each_attempt_at_a_trial_has_its_own_log(tmp_path, monkeypatch):
    path, folder = _sweep_file(tmp_path), tmp_path / "sweep"
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls := [], interrupt_at=1))
    assert main([str(path), "--sweep-dir", str(folder)]) == 130
    (folder / "trials").mkdir()  # the interrupted attempt had run and written its log
    (folder / "trials" / "0000.attempt-1.log").write_text("attempt 1's output\n")
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls))
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    logs = sorted(p.name for p in (folder / "trials").glob("0000.attempt-*.log"))
    assert logs == ["0000.attempt-1.log", "0000.attempt-2.log"]
    assert (folder / "trials" / "0000.attempt-1.log").read_text() == "attempt 1's output\n"


# --------------------------------------------------------------------------------------------
# Resuming after an interruption draws the points an uninterrupted sweep draws


def test_an_interrupted_random_sweep_draws_the_uninterrupted_points(tmp_path, monkeypatch):
    path = _sweep_file(tmp_path, method="random")
    monkeypatch.setattr(sweep_module, "_execute", fake_execute([]))
    assert main([str(path), "--count", "4", "--sweep-dir", str(tmp_path / "whole")]) == 0
    folder = tmp_path / "stopped"
    for stop in (2, 3):  # Ctrl-C during the second trial, then during the (new) third
        monkeypatch.setattr(sweep_module, "_execute", fake_execute([], interrupt_at=stop))
        assert main([str(path), "--count", "4", "--sweep-dir", str(folder)]) == 130
    monkeypatch.setattr(sweep_module, "_execute", fake_execute([]))
    assert main([str(path), "--count", "4", "--sweep-dir", str(folder)]) == 0
    assert _scores(folder) == _scores(tmp_path / "whole")
    assert len({row[0] for row in _scores(folder)}) == 4  # no point drawn twice


def test_a_grid_point_is_not_lost_when_its_trial_is_killed_before_drawing_it(tmp_path, monkeypatch):
    path, folder = _sweep_file(tmp_path), tmp_path / "sweep"
    local = LocalSweep(load_sweep(path), "grid", folder)
    study = local.open_study()
    study.ask()  # killed between Optuna's ask (the grid point assigned) and the draw
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls := []))
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    assert sorted(r[0] for r in _scores(folder)) == ["0.001", "0.01", "0.1"]
    assert len(calls) == 3


def test_a_trial_queued_again_by_the_previous_version_is_not_queued_twice(tmp_path, monkeypatch):
    """The previous version marked a queued-again trial by its run folder alone."""
    import optuna

    path, folder = _sweep_file(tmp_path), tmp_path / "sweep"
    run_dir = _running_trial(path, folder)[2]
    study = optuna.load_study(study_name="grid", storage=f"sqlite:///{folder / 'study.db'}")
    (trial,) = study.get_trials(deepcopy=False)
    study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
    grid = {k: trial.system_attrs[k] for k in ("grid_id", "search_space")}
    study.enqueue_trial(trial.params, user_attrs={"resume_from": str(run_dir), "grid": grid})
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls := []))
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    assert len(calls) == 3
    assert sorted(r[0] for r in _scores(folder)) == ["0.001", "0.01", "0.1"]


# --------------------------------------------------------------------------------------------
# Item 2: after study.db is lost, a trial folder of other parameters is moved aside


def test_after_study_db_is_lost_no_trial_reports_another_trials_run(tmp_path, monkeypatch, capsys):
    path, folder = _sweep_file(tmp_path, method="random"), tmp_path / "sweep"
    monkeypatch.setattr(sweep_module, "_execute", fake_execute([]))
    assert main([str(path), "--count", "2", "--sweep-dir", str(folder), "--seed", "0"]) == 0
    old = _scores(folder)
    (folder / "study.db").unlink()
    capsys.readouterr()
    assert main([str(path), "--count", "2", "--sweep-dir", str(folder), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    rows = _ranking(folder)
    assert {r["meta_optimizer.lr"] for r in rows}.isdisjoint({lr for lr, _, _ in old})
    for row in rows:  # each metric is that of a run of the row's own parameters
        lr = float(row["meta_optimizer.lr"])
        assert float(row["val/best_loss"]) == fake_metric(lr)
        saved = ckpt.load_run_checkpoint(Path(row["run_dir"]) / "last.pt")["config"]
        assert saved["meta_optimizer"]["lr"] == lr
    for number in ("0000", "0001"):  # the old runs were kept, moved aside, and said so
        aside = folder / "trials" / f"{number}.replaced-1"
        assert (aside / "last.pt").exists()
        assert f"trials/{number} held a run of other parameters (meta_optimizer.lr:" in out


def test_after_study_db_is_lost_the_same_trials_continue_their_runs(tmp_path, monkeypatch):
    path, folder = _sweep_file(tmp_path, method="random"), tmp_path / "sweep"
    monkeypatch.setattr(sweep_module, "_execute", fake_execute([]))
    assert main([str(path), "--count", "2", "--sweep-dir", str(folder)]) == 0
    before = _scores(folder)
    (folder / "study.db").unlink()
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls := []))
    assert main([str(path), "--count", "2", "--sweep-dir", str(folder)]) == 0
    assert _scores(folder) == before
    assert all("--resume" in command for command in calls)
    assert not list((folder / "trials").glob("*.replaced-*"))


def test_a_folder_without_a_checkpoint_of_its_trial_is_moved_aside_not_deleted(
    tmp_path, monkeypatch
):
    path, folder = _sweep_file(tmp_path), tmp_path / "sweep"
    stranger = folder / "trials" / "0000"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("someone's work")
    monkeypatch.setattr(sweep_module, "_execute", fake_execute([]))
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    assert (folder / "trials" / "0000.replaced-1" / "notes.txt").read_text() == "someone's work"
    assert len(_ranking(folder)) == 3


def test_a_changed_override_is_a_different_trial(tmp_path, monkeypatch):
    """Any difference of the recorded config counts, not only the swept keys."""
    folder = tmp_path / "sweep"
    monkeypatch.setattr(sweep_module, "_execute", fake_execute([]))
    first = _sweep_file(tmp_path, extra=("schedule.horizon=12",))
    assert main([str(first), "--sweep-dir", str(folder)]) == 0
    (folder / "study.db").unlink()
    second = _sweep_file(tmp_path, extra=("schedule.horizon=6",))
    assert main([str(second), "--sweep-dir", str(folder)]) == 0
    for row in _ranking(folder):
        saved = ckpt.load_run_checkpoint(Path(row["run_dir"]) / "last.pt")["config"]
        assert saved["schedule"]["horizon"] == 6
    assert len(list((folder / "trials").glob("*.replaced-1"))) == 3


def test_the_check_reads_the_checkpoints_config_not_the_folders_name(tmp_path):
    from meta_train.sweeps.folders import other_parameters

    path = _sweep_file(tmp_path)
    local = LocalSweep(load_sweep(path), "grid", tmp_path / "sweep")
    cfg = local.trial_config({"meta_optimizer.lr": 0.01})
    elsewhere = dict(cfg.to_dict(), run_dir="/moved/sweep/trials/0000")
    write_checkpoint(tmp_path / "run", elsewhere)
    assert other_parameters(tmp_path / "run" / "last.pt", cfg) is None  # a moved sweep folder
    other = command_config([PROGRAM, *TINY, "--meta_optimizer.lr=0.1", "--run-dir", "x"])[0]
    write_checkpoint(tmp_path / "run", other)
    reason = other_parameters(tmp_path / "run" / "last.pt", cfg)
    assert reason == "meta_optimizer.lr: 0.1 there, 0.01 here"


# --------------------------------------------------------------------------------------------
# Item 8: a damaged study.db is one line, exit 2, and nothing runs


@pytest.mark.parametrize("damage", ["random-bytes", "half-truncated", "a-folder"])
def test_a_damaged_study_db_is_one_clear_error(tmp_path, monkeypatch, capsys, damage):
    path, folder = _sweep_file(tmp_path), tmp_path / "sweep"
    monkeypatch.setattr(sweep_module, "_execute", fake_execute(calls := []))
    assert main([str(path), "--sweep-dir", str(folder)]) == 0
    database = folder / "study.db"
    if damage == "a-folder":
        database.unlink()
        database.mkdir()
    else:
        data = database.read_bytes()
        damaged = os.urandom(len(data)) if damage == "random-bytes" else data[: len(data) // 2]
        database.write_bytes(damaged)
    before = sorted(p.name for p in folder.rglob("*"))
    calls.clear()
    capsys.readouterr()
    assert main([str(path), "--sweep-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{database} is not a readable sweep study" in lines[0]
    assert "move it away" in lines[0]
    assert calls == [] and sorted(p.name for p in folder.rglob("*")) == before
