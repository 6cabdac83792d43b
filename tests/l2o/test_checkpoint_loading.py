"""Loading a learned-optimizer checkpoint: every broken file gets a message that names the path
and the problem, before any large allocation."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from l2o.optimizers import LearnedOptimizer, create, load_learned_optimizer, save_learned_optimizer
from l2o.optimizers.checkpoint_io import to_payload


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return save_learned_optimizer(tmp_path / "opt.pt", create("lstm"))


def _write(tmp_path, payload):
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


def test_empty_and_truncated_files_say_so(saved, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(empty)) + r".*truncated"):
        load_learned_optimizer(empty)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(cut)) + r" is truncated"):
        load_learned_optimizer(cut)
    with pytest.raises(ValueError, match="not a file"):
        load_learned_optimizer(tmp_path)


@pytest.mark.parametrize("entry", ["arch", "config", "state_dict"])
def test_a_missing_entry_is_named(entry, tmp_path):
    payload = to_payload(create("lstm"))
    del payload[entry]
    with pytest.raises(ValueError, match=f"no '{entry}' entry"):
        load_learned_optimizer(_write(tmp_path, payload))


def test_a_malformed_state_dict_is_named(tmp_path):
    payload = to_payload(create("lstm"))
    payload["state_dict"] = [1, 2]
    with pytest.raises(ValueError, match="'state_dict' must be a Mapping, found list"):
        load_learned_optimizer(_write(tmp_path, payload))
    payload = to_payload(create("lstm"))
    payload["state_dict"]["head.bias"] = [0.0]
    with pytest.raises(ValueError, match=r"not tensors: \['head.bias'\]"):
        load_learned_optimizer(_write(tmp_path, payload))


def test_config_sizes_are_checked_against_the_tensors_before_allocating(tmp_path):
    """A corrupt hidden_size would allocate terabytes; the shapes are compared first."""
    payload = to_payload(create("lstm"))
    payload["config"]["hidden_size"] = 10**6
    with pytest.raises(ValueError, match=r"shape mismatch .*lstm.weight_hh_l0"):
        load_learned_optimizer(_write(tmp_path, payload))
    payload["config"]["hidden_size"] = -1
    with pytest.raises(ValueError, match="config does not fit"):
        load_learned_optimizer(_write(tmp_path, payload))


def test_non_finite_weights_are_refused(tmp_path):
    payload = to_payload(create("lstm"))
    payload["state_dict"]["head.weight"][0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite .*\['head.weight'\]"):
        load_learned_optimizer(_write(tmp_path, payload))


def test_from_pretrained_takes_a_name_or_an_existing_path(saved, tmp_path, monkeypatch):
    """One rule: an existing file (relative to the current directory), else a shipped name."""
    p = [nn.Parameter(torch.zeros(3))]
    monkeypatch.chdir(tmp_path)
    assert LearnedOptimizer.from_pretrained("opt.pt", p).net.arch == "lstm"
    assert LearnedOptimizer.from_pretrained(saved, p).net.arch == "lstm"
    assert LearnedOptimizer.from_pretrained("lstm-mnist", p).net.arch == "lstm"
    missing = tmp_path / "runs" / "best.pt"
    with pytest.raises(ValueError, match=re.escape(str(missing)) + r" does not exist.*lstm-mnist"):
        LearnedOptimizer.from_pretrained("runs/best.pt", p)
    with pytest.raises(ValueError, match="not a checkpoint file"):
        LearnedOptimizer.from_pretrained(".", p)


def test_a_text_file_given_as_a_checkpoint_is_one_clear_error(tmp_path):
    """A run's config.yaml is not a checkpoint: one line saying so, not the unpickler's raw
    IndexError/KeyError."""
    config = tmp_path / "config.yaml"
    config.write_text("task:\n  name: mnist_mlp_relu\nschedule:\n  horizon: 20\n")
    with pytest.raises(
        ValueError, match=r"config\.yaml is not a loadable l2o .*a text file"
    ) as info:
        LearnedOptimizer.from_pretrained(str(config), [nn.Parameter(torch.zeros(3))])
    assert "\n" not in str(info.value).replace("\\n", "")
    (tmp_path / "notes.pt").write_text("hello world")
    with pytest.raises(ValueError, match="text file"):
        load_learned_optimizer(tmp_path / "notes.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage that is no pickle")
    with pytest.raises(ValueError, match="not a loadable"):
        load_learned_optimizer(tmp_path / "garbage.pt")
