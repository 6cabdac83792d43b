"""Finished cases survive a later failure: the evaluation's progress file and its output folder.

After every case, ``run_suite`` writes all finished cases to ``partial_results.pt`` in the output
folder (atomically: a kill leaves the previous version whole), with a fingerprint of everything
their numbers depend on: the suite's resolved cases, a hash of each learned optimizer's weights
and config, the baselines and nominal contenders, the criteria, the evaluation and tuning seeds
and the lr grid. A re-run with the same arguments reads the finished cases and runs only the
others; a re-run whose fingerprint differs is refused in one line naming what differs (its cases
would be mixed with another evaluation's), or starts afresh when told to. The file stays after
the evaluation ends, so that a re-run only rewrites the outputs; it loads with
``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from l2o.io import atomic_write, not_a_torch_file
from meta_train.evaluation.contenders import Learned
from meta_train.evaluation.runner import BaselineResult, CaseResult, Evaluation, Runs
from meta_train.evaluation.suites import Case
from meta_train.evaluation.tuning import GridPoint, Tuning

FILE = "partial_results.pt"
FORMAT = "l2o.evaluation.partial"
VERSION = 1
#: Every file an evaluation writes into its output folder (``report.write_outputs`` and this
#: module's); each must be free to be written as a file.
OUTPUT_FILES = (
    "summary.csv",
    "overall.csv",
    "results.json",
    "table.txt",
    "loss_curves.png",
    "ratios.png",
    FILE,
)


def check_output_folder(out: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder the evaluation could not write its files
    into: a file in its place or above it, one of its files present as a folder, a folder
    without write permission. Creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file; give a folder (--out)")
    ancestor = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not ancestor.is_dir():
        raise ValueError(f"output folder {out} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out} cannot be written: {ancestor} is not writable")
    for name in OUTPUT_FILES:
        if (out / name).is_dir():
            raise ValueError(
                f"{out / name} is a folder where the evaluation writes a file; move it away "
                "or choose another --out"
            )


def network_digest(learned: Learned) -> str:
    """SHA-256 of a learned optimizer's architecture, config and weights (not of its file:
    the same network saved twice has one digest, a ``last.pt`` that trained on has another)."""
    h = hashlib.sha256(learned.net.arch.encode())
    h.update(json.dumps(learned.net.config(), sort_keys=True).encode())
    for name, tensor in sorted(learned.net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint(ev: Evaluation, cases: Sequence[Case], learned: Sequence[Learned]) -> dict:
    """What the numbers of ``ev``'s cases depend on, as plain values."""
    return {
        "suite": ev.suite,
        "cases": [asdict(c) for c in cases],
        "learned": {lrn.name: network_digest(lrn) for lrn in learned},
        "baselines": list(ev.baselines),
        "nominals": dict(ev.nominals),
        "criteria": list(ev.criteria),
        "seeds": list(ev.seeds),
        "tune_seeds": list(ev.tune_seeds),
        "grid": asdict(ev.grid),
    }


class CaseStore:
    """The finished cases of one evaluation, kept in ``folder``/``partial_results.pt``.

    ``restart``: ignore (and then overwrite) whatever the folder holds. ``replace_other``: a
    file of another evaluation (another fingerprint) is replaced instead of refused (the end of
    a meta-training run, whose checkpoint may have changed since)."""

    def __init__(
        self, folder: str | os.PathLike, *, restart: bool = False, replace_other: bool = False
    ) -> None:
        self.path = Path(folder) / FILE
        self.restart, self.replace_other = restart, replace_other
        self.fingerprint: dict | None = None
        self.cases: dict[str, dict[str, Any]] = {}

    def open(self, ev: Evaluation, cases: Sequence[Case], learned: Sequence[Learned]) -> int:
        """Take the finished cases of the evaluation ``ev`` of ``cases`` (its ``fingerprint``),
        before it runs any; returns how many. Another evaluation's file: a one-line
        ``ValueError`` naming what differs."""
        now = self.fingerprint = fingerprint(ev, cases, learned)
        self.cases = {}
        if self.restart or not self.path.is_file():
            return 0
        try:
            saved = _read(self.path)
        except ValueError:
            if self.replace_other:
                return 0
            raise
        if saved["fingerprint"] != now:
            if self.replace_other:
                return 0
            differ = [k for k in now if saved["fingerprint"].get(k) != now[k]]
            raise ValueError(
                f"{self.path} holds the finished cases of another evaluation (it differs in "
                f"{', '.join(differ) or 'its format'}): re-run with the same arguments to "
                "continue it, add --restart to discard it, or choose another --out"
            )
        self.cases = saved["cases"]
        return len(self.cases)

    def finished(self, case: Case) -> CaseResult | None:
        """The result of ``case`` if a previous run finished it."""
        state = self.cases.get(case.id)
        return None if state is None else _case_result(state)

    def save(self, result: CaseResult) -> None:
        """Add ``result`` and rewrite the file atomically."""
        if self.fingerprint is None:
            raise RuntimeError("CaseStore.save before open")
        self.cases[result.case.id] = asdict(result)
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "cases": self.cases,
        }
        atomic_write(self.path, lambda fh: torch.save(payload, fh))


def _read(path: Path) -> dict[str, Any]:
    """The payload of a progress file; a one-line ``ValueError`` for anything else."""
    advice = "add --restart to discard it, or choose another --out"
    foreign = not_a_torch_file(path)
    if foreign:
        raise ValueError(f"{path} is not an evaluation's progress file: {foreign}; {advice}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path} cannot be read ({first}); {advice}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an evaluation's progress file; {advice}")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has progress-file version {payload.get('version')!r}, this l2o writes "
            f"{VERSION}; {advice}"
        )
    return payload


def _runs(state: dict[str, Any]) -> Runs:
    return Runs(**state)


def _tuning(state: dict[str, Any]) -> Tuning:
    return Tuning(**{**state, "grid": [GridPoint(**p) for p in state["grid"]]})


def _case_result(state: dict[str, Any]) -> CaseResult:
    """A ``CaseResult`` from its ``asdict`` form."""
    baselines = {
        name: BaselineResult(
            {c: _tuning(t) for c, t in b["tunings"].items()},
            {lr: _runs(r) for lr, r in b["runs"].items()},
        )
        for name, b in state["baselines"].items()
    }
    return CaseResult(
        Case(**state["case"]),
        {name: _runs(r) for name, r in state["learned"].items()},
        baselines,
        state["reference_step_time"],
    )
