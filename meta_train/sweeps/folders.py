"""A trial's run folder and logs: a checkpoint is continued only by the trial whose config made it.

A sweep folder's ``trials/NNNN`` is named by the trial's number in ``study.db``. When that file is
lost (or replaced), a new study numbers its trials from 0 again, and its trial 0 may have other
parameters than the run found in ``trials/0000``: that run is moved aside, never continued (a
resumed run keeps its own config, so it would report its old result under the new parameters).
Each attempt at a trial writes a log of its own, so that a failure never shows another
process's output.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import MetaTrainConfig, config_from_dict
from meta_train.training import checkpointing as ckpt

IGNORED_KEYS = ("run_dir",)  # where a run lives is no parameter of it


def other_parameters(last: Path, cfg: MetaTrainConfig) -> str | None:
    """None when the checkpoint ``last`` was made by ``cfg``; else how it differs."""
    try:
        saved = ckpt.load_run_checkpoint(last)["config"]
        saved = config_from_dict(copy.deepcopy(saved), saved=True).to_dict()
    except (ckpt.CheckpointError, ConfigError) as exc:
        return f"its checkpoint is unusable: {exc}"
    differences = [
        d for d in ckpt.config_differences(saved, cfg.to_dict()) if d[0] not in IGNORED_KEYS
    ]
    if not differences:
        return None
    shown = "; ".join(f"{key}: {a!r} there, {b!r} here" for key, a, b in differences[:3])
    more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
    return shown + more


def prepare_trial_folder(
    run_dir: Path, cfg: MetaTrainConfig, own: bool, note: Callable[[str], None]
) -> bool:
    """Whether the trial continues ``run_dir`` (a checkpoint of ``cfg``). ``own``: the folder is
    this study's trial's, queued again after an interruption; one without a checkpoint is then
    removed (it stopped before writing any). Any other folder there is moved aside, with a note."""
    if not run_dir.exists():
        return False
    last = run_dir / ckpt.LAST
    if last.exists():
        reason = other_parameters(last, cfg)
        if reason is None:
            return True
    elif own:
        shutil.rmtree(run_dir)
        return False
    else:
        reason = "it holds no checkpoint of this trial"
    aside = _free_name(run_dir, "replaced")
    run_dir.rename(aside)
    note(
        f"  {run_dir} held a run of other parameters ({reason}): moved to {aside.name}; "
        "the trial starts afresh"
    )
    return False


def _free_name(path: Path, tag: str) -> Path:
    n = 1
    while path.with_name(f"{path.name}.{tag}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.{tag}-{n}")


def new_attempt_log(run_dir: Path) -> Path:
    """The log of the next attempt at the trial in ``run_dir``: ``NNNN.attempt-K.log`` beside it,
    K one more than any before (an orphaned earlier attempt may still be writing its own)."""
    pattern = re.compile(rf"{re.escape(run_dir.name)}\.attempt-(\d+)\.log")
    found = [pattern.fullmatch(p.name) for p in run_dir.parent.glob(f"{run_dir.name}.attempt-*")]
    last = max((int(m.group(1)) for m in found if m), default=0)
    return run_dir.parent / f"{run_dir.name}.attempt-{last + 1}.log"
