"""The learned optimizers' C++ kernels (``kernels.cpp``, ``lstm_tape.cpp``): build, cache and load.

    python -m l2o.optimizers.native build     # compile now (else: on first use, with a message)
    python -m l2o.optimizers.native status    # where the build lives, its flags, whether built

Why a module of its own: the first use used to compile silently inside a training step, with
``-march=native`` under a cache key blind to the CPU (a home directory shared by different
cluster nodes then loads code built for another CPU: "illegal instruction"). Here the cache folder
is keyed by the source, the flags, torch, Python and the CPU's instruction-set features, and the
build announces itself on stderr. The flags keep IEEE semantics (no ``-ffast-math``: a NaN or
infinity must reach the update as it does in PyTorch); ``-fno-math-errno`` and
``-fno-trapping-math`` let ``sqrt``/``floor`` vectorize, and ``-fassociative-math`` (with
``-fno-signed-zeros``) lets the sums of the GEMM and gate loops vectorize: it reorders additions,
so results differ from a strict build in the last bits, but it keeps NaN and infinity handling
(that is ``-ffinite-math-only``'s part of ``-ffast-math``, which stays off). Measured with
``benchmarks/meta_train_speed.py --no-reference`` (interleaved, quiet machine), it recovers
about half of the ~9 % by which the first-order LSTM meta-step slowed between commit 018c128
(``-ffast-math``) and the strict build.

Building needs a C++ compiler and ``ninja`` (``pip install 'l2o[native]'``). Without them, or
with ``L2O_NATIVE=0``, ``native_kernels()`` is None and the optimizers compute the same thing
with PyTorch ops, more slowly. A built module is loaded directly, without importing
``torch.utils.cpp_extension`` (whose import logs "No CUDA runtime is found" on CPU machines).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from l2o.io import atomic_write, exclusive_lock

#: Rows from which the compiled kernels are used (tiny problems stay in PyTorch).
NATIVE_MIN_ROWS = 2048
#: The sources compiled into the module and the headers they include (all key the cache).
_HERE = Path(__file__).parents[1]
SOURCES = tuple(_HERE / name for name in ("kernels.cpp", "lstm_tape.cpp"))
HEADERS = tuple(_HERE / name for name in ("kernels.h", "lstm_blocks.h", "fast_exp.h"))
NAME = "l2o_kernels"
#: IEEE-preserving optimization flags (see the module docstring).
BASE_FLAGS = (
    "-O3",
    "-fopenmp",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
)
_DONE = "built.json"  # written after a successful build: the folder holds a complete module
_BUILD_LOCK = "build.flock"  # ours: an flock, released by the kernel when its holder dies
_TORCH_BATON = "lock"  # torch's: a plain file, left behind forever when its builder is killed

_native = None  # the loaded module, or False once it cannot be had in this process


def enabled() -> bool:
    """False when ``L2O_NATIVE=0`` asks for the PyTorch ops."""
    return os.environ.get("L2O_NATIVE", "1") != "0"


def cpu_features() -> str | None:
    """The CPU's instruction-set feature list (Linux ``/proc/cpuinfo`` ``flags`` on x86,
    ``Features`` on ARM), or None where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return " ".join(sorted(value.split()))
    return None


def compile_flags() -> list[str]:
    """``-march=native`` only where the cache key can name the CPU's features; else portable."""
    return [*BASE_FLAGS, *(["-march=native"] if cpu_features() is not None else [])]


def build_dir() -> Path:
    """The cache folder for this source, these flags, this torch/Python and this CPU."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch_extensions"
    )
    key = hashlib.sha256()
    for part in (
        *(path.read_bytes() for path in (*SOURCES, *HEADERS)),
        " ".join(compile_flags()).encode(),
        torch.__version__.encode(),
        sys.version.encode(),
        platform.machine().encode(),
        (cpu_features() or "portable").encode(),
    ):
        key.update(part + b"\0")
    return Path(root) / f"{NAME}_{key.hexdigest()[:16]}"


def is_built() -> bool:
    """True if this machine's module is in the cache (no compilation needed)."""
    return (build_dir() / _DONE).is_file()


def _import_built(folder: Path):
    spec = importlib.util.spec_from_file_location(NAME, folder / f"{NAME}.so")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(folder: Path, verbose: bool):
    """Compile with ``torch.utils.cpp_extension`` (imported here only: its import is noisy)."""
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)  # "No CUDA runtime is found": irrelevant to CPU kernels
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)
    cpp_extension.verify_ninja_availability()
    folder.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        NAME,
        [str(path) for path in SOURCES],
        extra_cflags=compile_flags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        verbose=verbose,
    )


@contextlib.contextmanager
def _exclusive_build(folder: Path):
    """One builder per cache folder, across processes, that never waits on a dead one.

    ``cpp_extension.load`` serializes builders with a plain ``lock`` file and waits for as long
    as it exists: a builder killed mid-compile (a SIGKILL, a preempted job) leaves it behind and
    every later process hangs in its first optimizer step. An ``flock`` dies with its holder, so
    whoever holds it knows that any ``lock`` file it finds is stale, and removes it.
    """
    with exclusive_lock(folder / _BUILD_LOCK):
        (folder / _TORCH_BATON).unlink(missing_ok=True)
        yield


def build(verbose: bool = False):
    """Compile (if not cached) and load the module; raises if it cannot be built."""
    folder = build_dir()
    if (folder / _DONE).is_file():
        return _import_built(folder)
    with _exclusive_build(folder):
        if (folder / _DONE).is_file():  # another process built it while we waited
            return _import_built(folder)
        return _build_locked(folder, verbose)


def _build_locked(folder: Path, verbose: bool):
    print(
        f"l2o: compiling the C++ kernels for this CPU once (about a minute) into {folder}; "
        "`python -m l2o.optimizers.native build` does it ahead of time",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    module = _compile(folder, verbose)
    info = {"flags": compile_flags(), "seconds": round(time.perf_counter() - start, 1)}
    atomic_write(folder / _DONE, json.dumps(info))
    return module


def native_kernels():
    """The compiled module (built on first use), or None where it cannot be had (disabled, no
    compiler or no ``ninja``): callers then use PyTorch ops for the same result."""
    global _native
    if _native is None:
        if not enabled():
            return None  # checked on every call: tests switch it per test
        try:
            _native = build()
        except Exception as exc:  # no compiler / ninja / headers: fall back for this process
            _native = False
            warnings.warn(
                f"could not build the learned optimizers' C++ kernels ({type(exc).__name__}: "
                f"{str(exc)[:200]}); using PyTorch ops (same results, slower). "
                "Install a C++ compiler and `pip install 'l2o[native]'` (ninja) for speed.",
                RuntimeWarning,
                stacklevel=2,
            )
    return (_native or None) if enabled() else None


def is_available() -> bool:
    """True if the compiled kernels can be used here (builds them if needed)."""
    return native_kernels() is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m l2o.optimizers.native", description=__doc__)
    parser.add_argument("command", choices=["build", "status"])
    parser.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    folder = build_dir()
    if args.command == "build":
        try:
            build(verbose=args.verbose)
        except Exception as exc:
            print(f"l2o: could not build the C++ kernels: {exc}", file=sys.stderr)
            return 1
        print(f"l2o: C++ kernels ready in {folder}")
        return 0
    status = {
        "enabled": enabled(),
        "built": is_built(),
        "build_dir": str(folder),
        "flags": compile_flags(),
        "cpu_features_known": cpu_features() is not None,
    }
    print(json.dumps(status, indent=2))
    return 0
