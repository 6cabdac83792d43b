"""The native build: portable/CPU-keyed flags, a visible first build, a quiet import."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from l2o.optimizers import native


def test_flags_keep_ieee_semantics_and_the_cache_key_names_the_cpu(monkeypatch):
    assert "-ffast-math" not in native.compile_flags()
    monkeypatch.setattr(native, "cpu_features", lambda: "avx2 fma sse4_2")
    avx2 = native.build_dir()
    assert "-march=native" in native.compile_flags()
    monkeypatch.setattr(native, "cpu_features", lambda: "avx512f avx2 fma sse4_2")
    assert native.build_dir() != avx2  # another CPU never loads this CPU's build
    monkeypatch.setattr(native, "cpu_features", lambda: None)
    assert "-march=native" not in native.compile_flags()  # unknown CPU: portable code


def test_first_use_announces_the_build_and_falls_back_when_it_fails(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("L2O_NATIVE", "1")
    monkeypatch.setattr(native, "_native", None)

    def no_ninja(folder, verbose):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(native, "_compile", no_ninja)
    with pytest.warns(RuntimeWarning, match=r"PyTorch ops .*l2o\[native\]"):
        assert native.native_kernels() is None
    assert "compiling the C++ kernels" in capsys.readouterr().err
    assert not native.is_available()  # decided once per process: no second attempt
    monkeypatch.setenv("L2O_NATIVE", "0")
    assert native.native_kernels() is None


def test_a_built_module_loads_without_importing_cpp_extension():
    """The import and a step are silent: torch.utils.cpp_extension (whose import logs "No CUDA
    runtime is found") is imported only to compile."""
    if not native.is_available():
        pytest.skip("no C++ toolchain")
    code = (
        "import sys, torch\n"
        "from l2o.optimizers import LearnedOptimizer, native\n"
        "p = torch.nn.Parameter(torch.zeros(4096)); p.grad = torch.ones(4096)\n"
        "LearnedOptimizer.from_pretrained('lstm-mnist', [p]).step()\n"
        "assert native.native_kernels() is not None\n"
        "print('torch.utils.cpp_extension' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert out.stderr == ""


def test_command_line_status_and_build():
    status = subprocess.run(
        [sys.executable, "-m", "l2o.optimizers.native", "status"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(status.stdout)
    assert info["build_dir"] == str(native.build_dir())
    assert "-ffast-math" not in info["flags"]
    assert status.stderr == ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = native.is_available()
    if built:  # cached: the command only loads it
        done = subprocess.run(
            [sys.executable, "-m", "l2o.optimizers.native", "build"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0 and "ready" in done.stdout


def test_a_build_killed_mid_compile_does_not_hang_the_next_one(monkeypatch, tmp_path):
    """torch's plain ``lock`` file, left by a killed builder, is cleared under our flock."""
    folder = tmp_path / "build"
    folder.mkdir()
    (folder / "lock").touch()  # what a SIGKILLed cpp_extension.load leaves behind
    compiled = []
    monkeypatch.setattr(native, "build_dir", lambda: folder)
    monkeypatch.setattr(native, "_import_built", lambda f: "module")

    def fake_compile(f, verbose):
        assert not (f / "lock").exists(), "the stale baton would make cpp_extension wait forever"
        compiled.append(f)
        return "module"

    monkeypatch.setattr(native, "_compile", fake_compile)
    assert native.build() == "module"
    assert compiled == [folder]
    assert (folder / "built.json").is_file()
    assert native.build() == "module" and compiled == [folder]  # cached: no second compile
