"""``benchmarks/gpu_report.py``: refuses to run without a GPU (status 2, one line), and its
``--dry-run`` (``--device cpu --tiny``) runs every measurement on the CPU, so the script keeps
working until a GPU is at hand."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_report.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled")
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def load_report_module():
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_exits_2_with_one_line():
    result = run_script()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == load_report_module().NO_GPU
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [(["--device", "cpu"], "only with --tiny"), (["--figures", "deploy,speed"], "unknown")],
)
def test_bad_arguments_are_refused(args, message):
    result = run_script(*args)
    assert result.returncode == 2 and message in result.stderr


def test_a_failing_figure_is_reported_and_the_status_is_1(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main sets it for --dry-run: restored after
    monkeypatch.setenv("L2O_NATIVE", "0")
    report = load_report_module()

    def broken(device, sizes):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(report, "deploy_figures", broken)
    assert report.main(["--dry-run", "--figures", "deploy"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"figure": "deploy", "error": "RuntimeError: out of memory (simulated)"} in lines
    assert lines[-1]["figure"] == "done" and lines[-1]["failed"] == ["deploy"]


@pytest.mark.slow
def test_dry_run_exercises_every_measurement():
    result = run_script("--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_figure: dict[str, list[dict]] = {}
    for line in lines:
        by_figure.setdefault(line["figure"], []).append(line)
    assert set(by_figure) == {
        "device",
        "deploy_step",
        "meta_train",
        "torchrun_smoke",
        "goal",
        "done",
    }
    assert by_figure["device"][0]["interpreted_triton"] is True
    deploy = {(d["optimizer"], d.get("backend")): d for d in by_figure["deploy_step"]}
    assert set(deploy) == {
        ("adamw_fused", None),
        ("general", "torch"),  # its orthogonal nominal term is not in the kernels
        ("general-v2", "triton"),
        ("general-v2", "torch"),
        ("mlp", "triton"),
        ("mlp", "torch"),
    }
    for line in deploy.values():
        assert line["ms"] > 0 and math.isfinite(line["ms"]) and line["params"] > 0
    assert {m["arch"] for m in by_figure["meta_train"]} == {"lstm", "mlp"}
    for line in by_figure["meta_train"]:
        assert line["pes_particle_steps_per_s"] > 0 and line["first_order_inner_steps_per_s"] > 0
    smoke = by_figure["torchrun_smoke"][0]
    assert smoke["ok"] and smoke["backend"] == "gloo" and smoke["meta_steps_logged"] > 0
    assert by_figure["goal"][0]["general_over_adamw_fused"] > 0
    assert by_figure["goal"][0]["backend"] == "torch"
    assert by_figure["done"][0]["failed"] == []
