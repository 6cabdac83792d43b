"""Recording trajectories of any torch optimizer: streams, probes, per-sample gradients, format."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from analysis.recording import (
    MAGIC,
    RecordingPlan,
    RecordingWriter,
    iter_frames,
    load_recording,
    record_run,
)
from l2o.tasks import get_task
from l2o.training import train_optimizee

STEPS = 8


@pytest.fixture(scope="module")
def task():
    return get_task("mnist_mlp_relu", dataset="mnist5k", batch_size=32)


@pytest.fixture(scope="module")
def data(task):
    return task.load_data()


def _sgd(params, lr=0.1):
    return torch.optim.SGD(params, lr=lr)


def test_streams_are_consistent_with_the_trajectory(task, data, tmp_path):
    plan = RecordingPlan(
        trajectory_steps=[2, 3, 4],
        per_sample_steps=[3],
        per_sample_count=32,
        probe_steps=[0, 4],
        probe_batches=3,
    )
    result, path = record_run(task, _sgd, STEPS, tmp_path / "sgd.rec", plan, data=data)
    rec = load_recording(path)
    assert not (tmp_path / "sgd.rec.partial").exists()
    assert rec.meta["task"] == task.name and rec.meta["structures"]["kinds"] == [
        "rescale",
        "translation",
    ]
    traj = rec.streams["trajectory"]
    assert traj["steps"].tolist() == [2, 3, 4]
    # θ_{t+1} = θ_t + Δθ_t, and SGD's Δθ_t = −lr·g_t
    torch.testing.assert_close(traj["params"][1], traj["params"][0] + traj["updates"][0])
    torch.testing.assert_close(traj["updates"], -0.1 * traj["grads"])
    # per-sample gradients at θ_t average to the minibatch gradient of step t
    per = rec.streams["per_sample"]["grads"][0]
    assert per.shape == (32, traj["params"].shape[1])
    torch.testing.assert_close(per.mean(0), traj["grads"][1], atol=1e-6, rtol=1e-4)
    # the loss trace equals the training result, and SGD keeps every symmetry
    torch.testing.assert_close(rec.streams["symmetry"]["loss"], result.train_losses)
    torch.testing.assert_close(rec.summary["train_losses"], result.train_losses)
    table = rec.streams["symmetry"]["table"]  # (T, [update, grad], structure, [mag, l1, norm])
    assert table.shape == (STEPS, 2, 2, 3)
    assert (table[:, :, :, 1] / table[:, :, :, 2] < 1e-4).all()
    # probes: SGD's update on each probe minibatch is −lr times that minibatch's gradient
    probe = rec.streams["probe"]
    assert probe["steps"].tolist() == [0, 4] and probe["grads"].shape[:2] == (2, 3)
    torch.testing.assert_close(probe["updates"], -0.1 * probe["grads"], atol=1e-7, rtol=1e-4)
    assert (probe["grads"][0, 0] - probe["grads"][0, 1]).abs().max() > 0  # distinct minibatches


def test_probes_use_the_optimizer_state_and_leave_the_run_untouched(task, data, tmp_path):
    adam = lambda params: torch.optim.Adam(params, lr=1e-3)
    plan = RecordingPlan(probe_steps=[0, 3, STEPS], probe_batches=2, trajectory_steps=[3])
    recorded, path = record_run(task, adam, STEPS, tmp_path / "adam.rec", plan, data=data)
    plain = train_optimizee(task, adam, STEPS, data=data)
    torch.testing.assert_close(recorded.train_losses, plain.train_losses, rtol=0, atol=0)
    rec = load_recording(path)
    probe = rec.streams["probe"]
    # a fresh Adam's first step moves every coordinate with a gradient by exactly lr
    first = probe["updates"][0, 0]
    moved = probe["grads"][0, 0] != 0
    torch.testing.assert_close(first[moved].abs(), torch.full_like(first[moved], 1e-3))
    # after 3 steps the moments are not fresh any more: updates are no longer ±lr
    assert not torch.allclose(probe["updates"][1, 0].abs(), torch.full_like(first, 1e-3))


def test_per_sample_skipped_with_warning_for_batchnorm(data, tmp_path):
    task = get_task("mnist_mlp_relu_bn", dataset="mnist5k", batch_size=16)
    plan = RecordingPlan(per_sample_steps=[1], trajectory_steps=[1])
    with pytest.warns(UserWarning, match="BatchNorm"):
        _, path = record_run(task, _sgd, 3, tmp_path / "bn.rec", plan, data=data)
    rec = load_recording(path)
    assert "per_sample" not in rec.streams
    assert rec.meta["structures"]["kinds"] == ["scale", "rescale", "translation"]


def test_small_chunks_stream_to_many_frames_and_load_the_same(task, data, tmp_path):
    plan = RecordingPlan(trajectory_steps=range(STEPS), chunk_mb=0.05)
    _, path = record_run(task, _sgd, STEPS, tmp_path / "many.rec", plan, data=data)
    big = RecordingPlan(trajectory_steps=range(STEPS))
    _, path_one = record_run(task, _sgd, STEPS, tmp_path / "one.rec", big, data=data)
    frames = [f["kind"] for f in iter_frames(path)]
    assert frames.count("chunk") >= 3  # streamed in several chunks, not held to the end
    a, b = load_recording(path), load_recording(path_one)
    for key in ("steps", "params", "updates", "grads"):
        torch.testing.assert_close(a.streams["trajectory"][key], b.streams["trajectory"][key])
    unflat = a.unflatten(a.streams["trajectory"]["params"][0])
    assert unflat["fc1.weight"].shape == (20, 784)


def test_truncated_file_keeps_its_prefix(tmp_path):
    path = tmp_path / "x.rec"
    writer = RecordingWriter(path, {"param_names": ["w"], "param_shapes": [[2]]})
    writer.append("s", 0, v=torch.ones(2))
    writer.flush()
    writer.append("s", 1, v=torch.zeros(2))
    writer.close()
    data = path.read_bytes()
    (tmp_path / "cut.rec").write_bytes(data[:-7])
    with pytest.warns(UserWarning, match="truncated"):
        rec = load_recording(tmp_path / "cut.rec")
    assert rec.streams["s"]["steps"].tolist() == [0]
    (tmp_path / "bad.rec").write_bytes(b"nope" + data)
    with pytest.raises(ValueError, match="magic"):
        load_recording(tmp_path / "bad.rec")
    assert data.startswith(MAGIC)


def test_frames_refuse_pickled_code(tmp_path):
    """Frames load with weights_only=True: a payload that would run code is refused."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"kind": "meta", "x": Evil()}, buf)
    payload = buf.getvalue()
    path = tmp_path / "evil.rec"
    path.write_bytes(MAGIC + len(payload).to_bytes(8, "little") + payload)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        load_recording(path)


def test_plan_validation(task, data, tmp_path):
    with pytest.raises(ValueError, match="probe_batches"):
        RecordingPlan(probe_steps=[1], probe_batches=1)
    with pytest.raises(ValueError, match="beyond"):
        record_run(task, _sgd, 3, tmp_path / "x.rec", RecordingPlan(trajectory_steps=[3]))


def test_learned_optimizer_and_baseline_are_recorded_without_disturbing_them(
    task, data, tmp_path, monkeypatch
):
    import baselines

    monkeypatch.setenv("L2O_COMPILE", "0")  # a first torch.compile costs seconds; same results
    from l2o.optimizers import LearnedOptimizer, LSTMOptimizer

    torch.manual_seed(0)
    net = LSTMOptimizer(hidden_size=8, output_scale=0.01)
    factories = {
        "l2o": lambda params: LearnedOptimizer(params, copy.deepcopy(net)),
        "lion": lambda params: baselines.create("lion", params, lr=1e-3),
    }
    plan = RecordingPlan(probe_steps=[2, 5], probe_batches=3, trajectory_steps=[5])
    for name, factory in factories.items():
        recorded, path = record_run(task, factory, 6, tmp_path / f"{name}.rec", plan, data=data)
        plain = train_optimizee(task, factory, 6, data=data)
        # deep-copied probes leave the recurrent / momentum state of the run untouched
        torch.testing.assert_close(recorded.train_losses, plain.train_losses, rtol=0, atol=0)
        rec = load_recording(path)
        probe = rec.streams["probe"]
        assert torch.isfinite(probe["updates"]).all()
        assert (probe["updates"][1, 0] - probe["updates"][1, 1]).abs().max() > 0
        # both break the symmetries: the relative update deviation is far from 0
        table = rec.streams["symmetry"]["table"]
        assert (table[:, 0, :, 1] / table[:, 0, :, 2]).mean() > 1e-2, name


class _GradEditingSGD(torch.optim.SGD):
    """Doubles .grad in place inside step (like optimizers that project or clip gradients)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.mul_(2.0)
        return super().step(closure)


def test_gradient_is_captured_before_the_optimizer_edits_it(task, data, tmp_path):
    # an SGD instance makes torch hook SGD.step too, so that super().step() runs the step
    # pre-hooks a second time, after the edit: only the first capture may count
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    plan = RecordingPlan(trajectory_steps=[1])
    make = lambda params: _GradEditingSGD(params, lr=0.1)
    _, path = record_run(task, make, 3, tmp_path / "edit.rec", plan, data=data)
    traj = load_recording(path).streams["trajectory"]
    torch.testing.assert_close(traj["updates"], -0.2 * traj["grads"])


def test_offline_symmetry_traces_match_the_online_ones(task, data, tmp_path):
    from analysis.symmetry_traces import by_kind, table_to_rows, traces_from_trajectory
    from l2o.symmetry import find_structures

    adam = lambda params: torch.optim.Adam(params, lr=1e-3)
    plan = RecordingPlan(trajectory_steps=[1, 4])
    _, path = record_run(task, adam, 5, tmp_path / "adam.rec", plan, data=data)
    rec = load_recording(path)
    offline = traces_from_trajectory(rec, find_structures(task.make_model(0)))
    online = rec.streams["symmetry"]["table"][[1, 4]]
    torch.testing.assert_close(offline, online)
    kinds = rec.meta["structures"]["kinds"]
    rel = by_kind(online, kinds, "relative")
    assert set(rel) == {"rescale", "translation"} and rel["rescale"].shape == (2, 2)
    rows = table_to_rows(torch.tensor([1, 4]), online, rec.meta["structures"]["labels"], kinds)
    assert len(rows) == 2 * 2 * 2 and {r["quantity"] for r in rows} == {"update", "gradient"}


@pytest.mark.parametrize("name", ["sf_adamw", "muon"])
def test_2026_baselines_record_the_change_of_the_trained_parameters(task, data, tmp_path, name):
    """Schedule-free AdamW stays in train mode during the run: θ is y and Δθ its change (θ_{t+1}
    = θ_t + Δθ_t holds between consecutive recorded steps); Muon's update is recorded whole:
    its orthogonalized steps on the matrices and AdamW's on the biases."""
    import baselines

    def make(params):
        return baselines.create(name, params, lr=0.01)

    plan = RecordingPlan(trajectory_steps=[1, 2, 3], probe_steps=[2], probe_batches=2)
    result, path = record_run(task, make, STEPS, tmp_path / f"{name}.rec", plan, data=data)
    rec = load_recording(path)
    traj = rec.streams["trajectory"]
    for t in range(2):
        torch.testing.assert_close(traj["params"][t + 1], traj["params"][t] + traj["updates"][t])
    torch.testing.assert_close(rec.streams["symmetry"]["loss"], result.train_losses)
    updates = rec.unflatten(traj["updates"][0])
    for pname, update in updates.items():
        assert update.abs().sum() > 0, pname
    assert torch.isfinite(rec.streams["probe"]["updates"]).all()
    if name == "muon":  # a matrix's update is near orthogonal: its singular values are similar
        matrix = next(u for u in updates.values() if u.dim() == 2)
        singular = torch.linalg.svdvals(matrix.double())
        top = singular[: min(matrix.shape) // 2]
        assert top.max() / top.min() < 3
