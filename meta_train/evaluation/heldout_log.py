"""The dated log of every run of a held-out suite.

A suite with ``role: heldout`` reports a shipped recipe and is never used to choose anything
(recipes, handcrafted hyperparameters, checkpoints are chosen on meta-training tasks and
``role: design`` suites). Choosing by looking at a suite and then reporting it overfits however
honest the note, so every run of a held-out suite — quick or full, finished or not — appends one
JSON line to ``<suite file>.runs.jsonl`` beside the suite (``configs/eval/heldout.runs.jsonl``):
when, from which commit, which optimizers (with their checkpoints' SHA-256), how many seeds, and
what it found. The log is committed with the results it backs; a reader counts the runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from l2o.io import atomic_write, exclusive_lock

LOG_SUFFIX = ".runs.jsonl"
#: ``git status`` pathspecs: the whole checkout but the run logs
NOT_LOGS = ("--", ":(top)", f":(top,exclude,glob)**/*{LOG_SUFFIX}")


def log_path(suite_source: str | Path) -> Path:
    """``configs/eval/heldout.yaml`` → ``configs/eval/heldout.runs.jsonl``."""
    path = Path(suite_source)
    return path.with_name(path.stem + LOG_SUFFIX)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_revision(folder: Path) -> str | None:
    """``<commit>`` or ``<commit>+dirty`` of the checkout holding ``folder``; None outside git.
    The run logs themselves do not count as dirt: a run beside another one, whose ``started``
    line is not committed yet, runs the same code."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no", *NOT_LOGS],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a run log, oldest first (an absent log is empty)."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return entries


def append_entry(path: str | Path, entry: dict[str, Any]) -> Path:
    """Append ``entry`` as one JSON line, rewriting the whole log atomically (a crash mid-write
    leaves the old log, never half a line), under an ``flock`` on a file beside it: evaluations
    running side by side each read the other's lines before writing, and none is lost."""
    path = Path(path)
    with exclusive_lock(path.with_name(f".{path.name}.lock")):
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        return atomic_write(path, old + json.dumps(entry, sort_keys=True) + "\n")


def start_entry(
    suite_source: str | Path,
    learned: dict[str, str],
    *,
    quick: bool,
    seeds: list[int],
    tune_seeds: list[int],
    baselines: list[str],
    criteria: list[str],
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """The entry of a run that starts now: what is run, from which code, on which suite file."""
    suite_source = Path(suite_source)
    return {
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "status": "started",
        "command": " ".join(argv if argv is not None else sys.argv),
        "git": git_revision(suite_source.resolve().parent),
        "suite_sha256": file_sha256(suite_source),
        "quick": quick,
        "seeds": [seeds[0], seeds[-1] + 1] if seeds else [],
        "tune_seeds": [tune_seeds[0], tune_seeds[-1] + 1] if tune_seeds else [],
        "baselines": list(baselines),
        "criteria": list(criteria),
        "learned": {
            name: {"source": source, "sha256": file_sha256(source)}
            for name, source in learned.items()
        },
    }


def finish_entry(entry: dict[str, Any], status: str, **found: Any) -> dict[str, Any]:
    """``entry`` completed: ``status`` (finished / failed / interrupted) and what was found."""
    return {
        **entry,
        "status": status,
        "ended": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **found,
    }
