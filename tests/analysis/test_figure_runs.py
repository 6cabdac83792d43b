"""analysis.figures.runs: finished recordings are reused only for the same settings, the compute
time adds up over reused work, and several learned optimizers get their display names."""

from __future__ import annotations

import pytest
import torch

from analysis.figures import runs
from analysis.figures.runs import Context, baseline_factory, lopt_factory, recorded_run
from analysis.figures.tuning import Tuning
from analysis.recording import RecordingPlan
from l2o.optimizers.wrapper import pretrained_path
from l2o.tasks import get_task

STEPS = 4


@pytest.fixture(scope="module")
def task():
    return get_task("mnist_mlp_relu", dataset="mnist5k", batch_size=32)


@pytest.fixture
def counted_record_run(monkeypatch):
    """``runs.record_run``, counting its calls."""
    calls = []
    real = runs.record_run

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "record_run", counted)
    return calls


def _run(ctx, task, lr=0.1, seed=100, steps=STEPS, plan=None):
    plan = plan or RecordingPlan(symmetry=True)
    return recorded_run(ctx, "t/sgd.rec", task, baseline_factory("sgd", lr), steps, plan, seed)


def test_a_finished_recording_is_reused_with_its_result_and_time(
    tmp_path, task, counted_record_run
):
    first_ctx = Context("tiny", tmp_path)
    rec, result = _run(first_ctx, task)
    assert len(counted_record_run) == 1 and first_ctx.compute_seconds > 0
    ctx = Context("tiny", tmp_path)  # a new invocation on the same folder
    again, reused = _run(ctx, task)
    assert len(counted_record_run) == 1  # not run again
    assert torch.equal(again.streams["symmetry"]["loss"], rec.streams["symmetry"]["loss"])
    assert torch.equal(reused.train_losses, result.train_losses)
    assert reused.test_loss == result.test_loss and reused.diverged == result.diverged
    assert ctx.compute_seconds == pytest.approx(first_ctx.compute_seconds)


@pytest.mark.parametrize(
    "change",
    [{"lr": 0.05}, {"seed": 101}, {"steps": STEPS + 1}, {"plan": RecordingPlan(symmetry=False)}],
)
def test_a_changed_setting_records_the_run_again(tmp_path, task, counted_record_run, change):
    ctx = Context("tiny", tmp_path)
    _run(ctx, task)
    rec, _ = _run(ctx, task, **change)
    assert len(counted_record_run) == 2
    assert rec.rows("symmetry") == change.get("steps", STEPS)
    _run(ctx, task, **change)  # the new recording is the finished one now
    assert len(counted_record_run) == 2


def test_an_unreadable_or_unfinished_file_is_recorded_again(tmp_path, task, counted_record_run):
    ctx = Context("tiny", tmp_path)
    path = ctx.path("recordings/t/sgd.rec")
    path.write_bytes(b"garbage")
    rec, _ = _run(ctx, task)
    assert len(counted_record_run) == 1 and rec.rows("symmetry") == STEPS


def test_a_learned_optimizer_is_identified_by_its_checkpoint_bytes(tmp_path):
    general = lopt_factory(pretrained_path("general"), STEPS)
    lstm = lopt_factory(pretrained_path("lstm-mnist"), STEPS)
    assert general.identity != lstm.identity
    copy = tmp_path / "copy.pt"
    copy.write_bytes(pretrained_path("general").read_bytes())
    assert lopt_factory(copy, STEPS).identity == general.identity


def test_general_is_told_the_runs_length_and_the_lstm_is_not():
    """Left at its default horizon (200), general's step would decay to zero at step 200 of a
    500-step figure; a network without progress inputs is recorded the same for any length."""
    param = [torch.nn.Parameter(torch.zeros(3))]
    general = lopt_factory(pretrained_path("general"), 500)
    assert general(param).total_steps == 500
    assert general.identity != lopt_factory(pretrained_path("general"), 200).identity
    lstm = lopt_factory(pretrained_path("lstm-paper"), 500)
    assert lstm(param).total_steps is None
    assert lstm.identity == lopt_factory(pretrained_path("lstm-paper"), 200).identity


def test_the_shipped_general_optimizer_is_recorded(tmp_path, task):
    ctx = Context("tiny", tmp_path)
    plan = RecordingPlan(symmetry=True, trajectory_steps=(0, 2), probe_steps=(1,), probe_batches=2)
    factory = lopt_factory(pretrained_path("general"), STEPS)
    rec, result = recorded_run(ctx, "general.rec", task, factory, STEPS, plan, 100)
    assert rec.rows("symmetry") == STEPS and not result.diverged
    updates = rec.streams["trajectory"]["updates"]
    assert torch.isfinite(updates).all() and updates.abs().sum() > 0
    assert rec.streams["probe"]["updates"].shape[:2] == (1, 2)


def test_several_lopts_are_named_l2o_then_by_pretrained_name_or_file(tmp_path):
    run_dir = tmp_path / "my-run"
    run_dir.mkdir()
    best = run_dir / "best.pt"
    best.write_bytes(pretrained_path("lstm-mnist").read_bytes())
    other = tmp_path / "sweep7.pt"
    other.write_bytes(pretrained_path("lstm-mnist").read_bytes())
    named = runs.resolve_lopts(f"lstm-mnist, general,{best},{other}")
    assert list(named) == ["L2O", "general", "my-run", "sweep7"]
    assert named["general"] == pretrained_path("general")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lstm-mnist,,general", "an empty name"),
        ("lstm-mnist,general,general", "shown as 'general'"),
        ("lstm-mnist,nonesuch", "--lopt nonesuch: no such checkpoint"),
    ],
)
def test_bad_lopt_lists_fail_with_one_line(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        runs.resolve_lopts(spec)
    assert "\n" not in str(err.value)


def test_tuning_time_counts_once_per_figure(tmp_path, task):
    ctx = Context("tiny", tmp_path)
    tuning = Tuning(lr_grid=(0.1,), steps=2, seeds=1)
    ctx.tuned_lr(task, "sgd", tuning)
    searched = ctx.compute_seconds
    assert searched > 0
    ctx.tuned_lr(task, "sgd", tuning)
    assert ctx.compute_seconds == searched
    ctx.start_figure()  # the next figure counts the search it uses again
    ctx.tuned_lr(task, "sgd", tuning)
    assert ctx.compute_seconds == searched
    fresh = Context("tiny", tmp_path)  # the cache on disk holds the search's time
    fresh.tuned_lr(task, "sgd", tuning)
    assert fresh.compute_seconds == pytest.approx(searched)


def test_fig9_summary_gives_the_training_loss_at_the_papers_steps(tmp_path, monkeypatch):
    """Figure 9's summary holds each optimizer's minibatch training loss at step 10 (the tiny
    runs are 12 steps: 100 and 200 are left out), its mean and interval over the seeds' runs."""
    from analysis.figures import fig9
    from analysis.recording import load_recording

    monkeypatch.setattr(fig9, "NEW_BASELINES", ())
    settings = fig9.SETTINGS["tiny"]
    data = fig9.compute(Context("tiny", tmp_path), settings)
    at = data.summary["training_loss_at_step"]
    assert set(at) == {"SGD", "Adam"} and all(set(by) == {10} for by in at.values())
    seeds = range(settings.seed, settings.seed + settings.seeds)
    recorded = [
        float(
            load_recording(tmp_path / f"recordings/fig9/Adam-seed{s}.rec").summary["train_losses"][
                9
            ]
        )
        for s in seeds
    ]
    assert at["Adam"][10]["n"] == settings.seeds
    assert at["Adam"][10]["mean"] == pytest.approx(sum(recorded) / len(recorded))
    low, high = at["Adam"][10]["ci95"]
    assert low < at["Adam"][10]["mean"] < high


def test_the_data_a_task_trained_on_is_recorded_after_a_fallback(tmp_path, monkeypatch):
    """A task on full MNIST that falls back to mnist5k (no MNIST under $L2O_DATA) is reported
    as trained on mnist5k, reused recording or not."""
    monkeypatch.setenv("L2O_DATA", str(tmp_path / "no-data-here"))
    task = get_task("mnist_mlp_relu", dataset="mnist", batch_size=32)
    for _ in range(2):  # recorded, then reused
        ctx = Context("tiny", tmp_path)
        with pytest.warns(UserWarning, match="falling back to 'mnist5k'"):
            _run(ctx, task)
        assert ctx.data_used == {"mnist_mlp_relu": "mnist5k"}
