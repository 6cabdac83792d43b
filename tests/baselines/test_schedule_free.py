"""``sf_adamw``: the ``schedulefree`` package's AdamW, starting in train mode; the point the
training loss is measured at (``y``) is not the point it returns (``x``, after ``eval()``), and
the shared training path switches to ``x`` before the test metrics."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import schedulefree
import torch
from optim_testing import TinyClassifier

import baselines
from baselines.schedule_free import ScheduleFreeAdamW


def _train(model: TinyClassifier, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss().backward()
        optimizer.step()


def test_is_the_packages_adamw_schedule_free_in_train_mode():
    ours, theirs = TinyClassifier(), TinyClassifier()
    _train(ours, baselines.create("sf_adamw", ours.parameters(), lr=0.05), steps=5)
    reference = schedulefree.AdamWScheduleFree(theirs.parameters(), lr=0.05)
    reference.train()
    _train(theirs, reference, steps=5)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_eval_moves_to_the_average_and_train_moves_back():
    """In train mode the parameters are y = (1 − β₁) z + β₁ x; eval() puts x there."""
    model = TinyClassifier()
    optimizer = ScheduleFreeAdamW(model.parameters(), lr=0.05)
    _train(model, optimizer, steps=5)
    y = [p.detach().clone() for p in model.parameters()]
    z = [optimizer.state[p]["z"].clone() for p in model.parameters()]
    optimizer.eval()
    x = [p.detach().clone() for p in model.parameters()]
    beta1 = optimizer.param_groups[0]["betas"][0]
    for yi, zi, xi in zip(y, z, x):
        assert not torch.allclose(xi, yi)
        torch.testing.assert_close(xi, (yi - (1 - beta1) * zi) / beta1)
    with pytest.raises(RuntimeError, match=r"eval mode: call optimizer\.train"):
        optimizer.step()
    optimizer.train()
    for yi, p in zip(y, model.parameters()):
        torch.testing.assert_close(p.detach(), yi)


def test_train_optimizee_measures_the_test_metric_at_x():
    """The training losses are at y (where the gradient is taken), the test loss at x."""
    from l2o.tasks import get_task
    from l2o.training import evaluate, train_optimizee

    task = get_task("mnist_mlp_sigmoid", dataset="mnist5k")
    data = task.load_data("cpu")
    seen = {}

    def factory(params):
        optimizer = ScheduleFreeAdamW(params, lr=0.01)
        optimizer.eval()  # the shared path must put it back in train mode itself
        seen["optimizer"] = optimizer
        return optimizer

    def record(step, model, optimizer, *_):
        seen["model"] = model

    result = train_optimizee(task, factory, 4, seed=0, data=data, callback=record)
    optimizer, model = seen["optimizer"], seen["model"]
    assert not optimizer.param_groups[0]["train_mode"]  # eval() before the test metric
    assert (result.test_loss, result.test_acc) == evaluate(model, task, data)  # at x
    optimizer.train()
    assert evaluate(model, task, data)[0] != result.test_loss  # y is another point


def test_state_dict_round_trip_keeps_the_mode_and_the_average():
    model = TinyClassifier()
    optimizer = ScheduleFreeAdamW(model.parameters(), lr=0.05)
    _train(model, optimizer, steps=3)
    buffer = io.BytesIO()
    params = [p.detach() for p in model.parameters()]
    torch.save({"opt": optimizer.state_dict(), "params": params}, buffer)
    _train(model, optimizer, steps=3)
    optimizer.eval()

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    again = TinyClassifier()
    with torch.no_grad():
        for p, s in zip(again.parameters(), saved["params"]):
            p.copy_(s)
    resumed = ScheduleFreeAdamW(again.parameters(), lr=0.05)
    resumed.load_state_dict(saved["opt"])
    _train(again, resumed, steps=3)
    resumed.eval()
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_a_group_added_later_takes_the_mode_of_the_others():
    optimizer = ScheduleFreeAdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))]})
    assert [g["train_mode"] for g in optimizer.param_groups] == [True, True]


@pytest.mark.parametrize(
    ("hparams", "field"),
    [
        ({"betas": (0.0, 0.999)}, "beta1"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"eps": float("nan")}, "eps"),
    ],
)
def test_bad_hyperparameters_name_the_field(hparams, field):
    with pytest.raises(ValueError, match=field):
        ScheduleFreeAdamW([torch.nn.Parameter(torch.ones(2))], **hparams)


def test_baselines_import_without_schedulefree_and_name_it_when_asked():
    code = (
        "import sys\n"
        "sys.modules['schedulefree'] = None  # what Python does for a package that is not there\n"
        "import torch, baselines\n"
        "assert 'sf_adamw' in baselines.available()\n"
        "p = torch.nn.Parameter(torch.ones(3))\n"
        "baselines.create('muon', [p], lr=0.1)\n"
        "try:\n"
        "    baselines.create('sf_adamw', [p], lr=0.1)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "needs the 'schedulefree' package: pip install" in out.stdout
