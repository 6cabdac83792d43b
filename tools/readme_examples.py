"""Run the README's examples as written, so that the front page cannot drift from the code.

    python tools/readme_examples.py            # the `run` blocks (what tests/test_readme.py runs)
    python tools/readme_examples.py --long     # the `long` blocks (what .ci/run runs)
    python tools/readme_examples.py --list     # every block: its line, language and marker

Every fenced code block of the README carries a marker, an HTML comment on the line right before
its opening fence (invisible on the rendered page):

    <!-- example: run -->                 seconds: run by tests/test_readme.py under pytest
    <!-- example: long (why) -->          minutes: run only by .ci/run
    <!-- example: ci-commands (why) -->   the quick start: .ci/run runs each of its commands itself
    <!-- example: skip (why) -->          not runnable here (an account, a server), and why

Each block runs in a fresh folder that holds a symlink to every top-level entry of the repository,
so `python meta_train/run.py` and `configs/...` resolve as in a fresh clone while what the block
writes (`runs/`, `out/`) stays out of the checkout. bash blocks run under `bash -euo pipefail`,
python blocks with this interpreter, whose folder comes first on PATH (`python`, `torchrun`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

KINDS = ("run", "long", "ci-commands", "skip")
RUNNABLE_LANGUAGES = ("bash", "python")
#: Kinds whose marker must say why the block is not run by the tests.
KINDS_WITH_REASON = ("long", "ci-commands", "skip")
#: Top-level entries a sandbox does not link: outputs and tool state of the checkout.
NOT_LINKED = {".git", ".venv", "runs", "out", "build", "wandb", ".pytest_cache", ".ruff_cache"}
#: Seconds a block may run before it counts as failed.
TIMEOUTS = {"run": 900, "long": 3600}

MARKER = re.compile(r"^<!--\s*example:\s*(?P<kind>[\w-]+)\s*(?:\((?P<reason>.+)\))?\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Example:
    """One fenced block of the README: where it starts, its language, code and marker."""

    line: int  # 1-based line of the opening fence
    language: str
    code: str
    kind: str | None  # None: no marker
    reason: str | None

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def parse(text: str) -> list[Example]:
    """Every fenced block of ``text`` with the marker on the line before it, if any."""
    lines = text.splitlines()
    examples, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"README.md:{index + 1}: code block never closed")
        marker = MARKER.match(lines[index - 1].strip()) if index else None
        examples.append(
            Example(
                line=index + 1,
                language=opening["lang"],
                code="\n".join(lines[index + 1 : end]) + "\n",
                kind=marker["kind"] if marker else None,
                reason=marker["reason"] if marker else None,
            )
        )
        index = end + 1
    return examples


def marker_problems(examples: list[Example]) -> list[str]:
    """What is wrong with the blocks' markers: one line per problem, none when all are right."""
    problems = []
    for ex in examples:
        if ex.kind is None:
            problems.append(f"{ex.where}: no <!-- example: KIND --> marker on the line before")
        elif ex.kind not in KINDS:
            problems.append(f"{ex.where}: unknown marker {ex.kind!r}; one of {list(KINDS)}")
        elif ex.kind in KINDS_WITH_REASON and not ex.reason:
            problems.append(f"{ex.where}: a {ex.kind!r} marker says why: ({ex.kind} (reason))")
        elif ex.kind in TIMEOUTS and ex.language not in RUNNABLE_LANGUAGES:
            problems.append(
                f"{ex.where}: a {ex.language or 'plain'!r} block cannot run; "
                f"runnable: {list(RUNNABLE_LANGUAGES)}"
            )
    return problems


def commands(example: Example) -> list[str]:
    """The shell commands of a block: comment lines and trailing comments dropped, `a && b`
    split into its commands."""
    found = []
    for line in example.code.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            found += [part.strip() for part in line.split("&&")]
    return found


def make_sandbox(folder: Path, root: Path = ROOT) -> Path:
    """``folder`` with a symlink to each top-level entry of ``root`` but its outputs."""
    for entry in sorted(root.iterdir()):
        if entry.name not in NOT_LINKED:
            (folder / entry.name).symlink_to(entry)
    return folder


def run_example(example: Example, folder: Path) -> subprocess.CompletedProcess:
    """Run one block in ``folder``; stdout and stderr together in ``.stdout``."""
    if example.kind not in TIMEOUTS or example.language not in RUNNABLE_LANGUAGES:
        raise ValueError(f"{example.where}: a {example.kind!r} {example.language!r} block")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("WANDB_MODE", "disabled")
    if example.language == "python":
        script = folder / f"readme_example_{example.line}.py"
        script.write_text(example.code)
        argv = [sys.executable, script.name]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", example.code]
    return subprocess.run(
        argv,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUTS[example.kind],
        check=False,
    )


def run_in_sandbox(example: Example) -> subprocess.CompletedProcess:
    """Run one block in a fresh sandbox, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="readme-example-") as tmp:
        return run_example(example, make_sandbox(Path(tmp)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="run the `long` blocks instead")
    parser.add_argument("--list", action="store_true", help="list the blocks and exit")
    args = parser.parse_args(argv)

    examples = parse(README.read_text(encoding="utf-8"))
    problems = marker_problems(examples)
    if args.list:
        for ex in examples:
            reason = f" ({ex.reason})" if ex.reason else ""
            print(f"{ex.where:<15} {ex.language or '-':<7} {ex.kind}{reason}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if args.list:
        return 0

    kind = "long" if args.long else "run"
    chosen = [ex for ex in examples if ex.kind == kind]
    started, failed = time.perf_counter(), []
    for ex in chosen:
        began = time.perf_counter()
        try:
            done = run_in_sandbox(ex)
        except subprocess.TimeoutExpired:
            print(f"{ex.where} {ex.language}: TIMED OUT after {TIMEOUTS[kind]} s", flush=True)
            failed.append(ex)
            continue
        seconds = time.perf_counter() - began
        status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        print(f"{ex.where} {ex.language}: {status} in {seconds:.1f} s", flush=True)
        if done.returncode != 0:
            print(done.stdout[-6000:], flush=True)
            failed.append(ex)
    total = time.perf_counter() - started
    ok = len(chosen) - len(failed)
    print(f"README examples ({kind}): {ok} ok, {len(failed)} failing, {total:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
