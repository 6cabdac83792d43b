"""A run folder written before ``meta_train/`` was laid out in subpackages (issue 26) still
works: ``run.py --resume`` continues it to the weights a fresh run reaches, and
``evaluate.py`` and ``LearnedOptimizer.from_pretrained`` load its checkpoints.

``tests/fixtures/tiny_run_v0`` was written by the code of commit 53e4e28 (its README says how);
its checkpoints hold tensors and plain containers only (loaded with ``weights_only=True``), so no
module path that moved is pickled in them."""

import io
import json
import pickletools
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from python_process import run_python

import l2o.optimizers as lo
from meta_train.training import checkpointing as ckpt

ROOT = Path(__file__).resolve().parents[3]
OLD_RUN = ROOT / "tests" / "fixtures" / "tiny_run_v0"
TINY = ["meta_test.enabled=false", "threads=1"]


def _run(*args: str, cwd: Path, script: str = "run.py") -> subprocess.CompletedProcess:
    """``python meta_train/SCRIPT ARGS...`` as a user runs it."""
    return run_python(str(ROOT / "meta_train" / script), *args, cwd=cwd)


def _pickled_modules(path: Path) -> set[str]:
    """The modules a checkpoint's pickle names (``GLOBAL`` opcodes and ``STACK_GLOBAL``'s
    strings): what ``torch.load`` would have to import."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        data = archive.read(name)
    modules, strings = set(), []
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name == "GLOBAL":
            modules.add(arg.split(" ")[0])
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            modules.add(strings[-2])
    return modules


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_the_old_checkpoints_name_no_project_module(name):
    modules = _pickled_modules(OLD_RUN / name)
    assert modules and not {m for m in modules if m.split(".")[0] in ("meta_train", "l2o")}
    torch.load(OLD_RUN / name, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_resume_continues_the_old_run_as_a_fresh_run_goes(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(OLD_RUN, old)
    resumed = _run("--resume", str(old), "schedule.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fresh = _run(
        "--config",
        "tiny",
        "--run-dir",
        str(tmp_path / "fresh"),
        "schedule.epochs=2",
        *TINY,
        cwd=tmp_path,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]

    a = ckpt.load_run_checkpoint(old / ckpt.LAST)
    b = ckpt.load_run_checkpoint(tmp_path / "fresh" / ckpt.LAST)
    assert a["position"] == b["position"] and a["position"]["epoch"] == 2
    # Within one version of the code resume is bit for bit (test_resume.py); across versions
    # only as close as float rounding: a faster kernel may sum in another order (measured: 1e-7).
    for key in ("lopt", "meta_optimizer"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        assert len(flat_a) == len(flat_b) > 0
        for x, y in zip(flat_a, flat_b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=key)
    started = _tensors(ckpt.load_run_checkpoint(OLD_RUN / ckpt.LAST)["lopt"])
    assert any(not torch.equal(x, y) for x, y in zip(started, _tensors(a["lopt"]), strict=True))
    # the old metrics are kept, the continuation appended to them
    before = (OLD_RUN / "metrics.jsonl").read_text().splitlines()
    after = (old / "metrics.jsonl").read_text().splitlines()
    assert after[: len(before)] == before and len(after) > len(before)
    assert json.loads(after[-1])["step"] == a["position"]["global_step"] == 8


def _tensors(tree) -> list[torch.Tensor]:
    if torch.is_tensor(tree):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, list | tuple):
        return [t for item in tree for t in _tensors(item)]
    return []


def test_from_pretrained_loads_the_old_best():
    model = torch.nn.Linear(3, 2)
    optimizer = lo.LearnedOptimizer.from_pretrained(OLD_RUN / "best.pt", model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(4, 3)).square().sum().backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_the_evaluation_loads_the_old_run_folder_and_both_checkpoints():
    from meta_train.evaluation.contenders import resolve_learned

    best = resolve_learned(str(OLD_RUN))  # a run folder: its best.pt
    assert best.source == str(OLD_RUN / "best.pt")
    assert (best.task, best.dataset, best.horizon) == ("mnist_mlp_sigmoid", "mnist5k", 6)
    last = resolve_learned(str(OLD_RUN / "last.pt"))  # the weights inside a run checkpoint
    assert (last.task, last.horizon) == (best.task, best.horizon)
    assert sum(p.numel() for p in last.net.parameters()) == sum(
        p.numel() for p in best.net.parameters()
    )


@pytest.mark.slow
def test_evaluate_py_evaluates_the_old_run_folder(tmp_path):
    out = tmp_path / "eval"
    done = _run(
        str(OLD_RUN),
        *("--suite", "indist", "--quick", "--seeds", "1", "--tune-seeds", "1"),
        *("--baselines", "adam", "--per-decade", "1", "--no-plot", "--out", str(out)),
        cwd=tmp_path,
        script="evaluate.py",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert str(OLD_RUN / "best.pt") in json.dumps(results)
