"""The typed meta-training config: YAML file + ``key=value`` overrides → validated dataclasses.

Every value a run needs is a field here, so that a misspelt key, a wrong type or an out-of-range
value fails in milliseconds, naming the key, before data is loaded or a network is built. The
YAML files in ``configs/meta_train/`` mirror these dataclasses section by section; overrides use
dotted keys (``meta_optimizer.lr=3e-3``) in either the ``key=value`` or the ``--key=value`` form
(the one ``wandb agent`` passes).

This module is the whole config, ``MetaTrainConfig``, and how it is read (``load_config``,
``config_from_dict``: old key names renamed, retired ones refused), written (``dump_yaml``) and
found (named configs in ``configs/meta_train/``). Its sections and their range checks are
``meta_train.configuration.sections``, the checks across sections and of names
``meta_train.configuration.checks``; turning YAML and overrides into dataclasses is
``meta_train.configuration.engine``'s generic job; the ``unroll`` section is
``meta_train.inner_loop.unroll.UnrollConfig`` itself.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meta_train.configuration.checks import check_across_sections
from meta_train.configuration.engine import (
    ConfigError,
    build,
    load_yaml,
    parse_override,
    plain,
    set_dotted,
)
from meta_train.configuration.engine import all_keys as _all_keys
from meta_train.configuration.sections import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    MetaOptimizerConfig,
    MetaTestConfig,
    OptimizerConfig,
    RegularizationConfig,
    ReliabilityConfig,
    ScheduleConfig,
    TaskConfig,
    ValidationConfig,
    WandbConfig,
)
from meta_train.inner_loop.unroll import UnrollConfig

# Keys renamed since older configs and checkpoints were written: old dotted key → new one.
RENAMED_KEYS = {"unroll.order": "unroll.estimator"}
#: Keys of the paper-criterion meta-test that the fair evaluation replaced: an error in a config
#: or an override (naming what to use instead), dropped from a checkpoint's saved config.
RETIRED_KEYS = {
    f"meta_test.{key}": "the run ends with meta_train/evaluate.py's suites (meta_test.suites, "
    "meta_test.seeds, meta_test.baselines), which tune every baseline on their own grid"
    for key in ("steps", "first_seed", "lr_grid", "grid_steps", "grid_seeds", "report_steps")
}


@dataclass
class MetaTrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    unroll: UnrollConfig = field(default_factory=UnrollConfig)  # meta_train.inner_loop.unroll
    meta_optimizer: MetaOptimizerConfig = field(default_factory=MetaOptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    meta_test: MetaTestConfig = field(default_factory=MetaTestConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    name: str = "meta_train"  # used in the default run folder name and as the W&B run name
    run_dir: str | None = None  # None: runs/<name>-<timestamp> under the current folder
    seed: int = 0
    device: str = "cpu"  # cpu, cuda, cuda:N or auto
    deterministic: bool = True  # torch.use_deterministic_algorithms: bit-reproducible CPU runs
    threads: int | None = None  # torch.set_num_threads; None: meta_train.training.threads' default

    def __post_init__(self) -> None:
        check_across_sections(self)

    @property
    def meta_steps_per_run(self) -> int:
        return self.horizon_schedule.min // self.unroll.length

    @property
    def horizon_schedule(self):
        """``schedule.horizon`` as a ``meta_train.inner_loop.truncation.HorizonSchedule``."""
        from meta_train.inner_loop.truncation import HorizonSchedule

        try:
            return HorizonSchedule.parse(self.schedule.horizon)
        except ValueError as exc:
            raise ConfigError(f"schedule.horizon: {exc}") from None

    @property
    def per_task_runs(self) -> bool:
        """Tasks restart on their own clocks (a horizon range, or ``schedule.desync``)."""
        h = self.horizon_schedule
        return self.schedule.desync or h.min != h.max

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON/``weights_only``-safe containers (tuples become lists)."""
        return plain(dataclasses.asdict(self))


def all_keys() -> list[str]:
    """Every dotted key of the config (``optimizer.kwargs`` stands for its free-form dict)."""
    return _all_keys(MetaTrainConfig)


def _rename_old_keys(data: dict[str, Any], saved: bool = False) -> dict[str, Any]:
    """``data`` with the :data:`RENAMED_KEYS` moved to their new names (old configs and
    checkpoints keep working); giving both names is an error. :data:`RETIRED_KEYS` are dropped
    from a ``saved`` (checkpoint) config and refused elsewhere."""
    out = copy.deepcopy(data)  # never edit the caller's mapping (a checkpoint's saved config)
    for key, instead in RETIRED_KEYS.items():
        section, leaf = key.split(".")
        node = out.get(section)
        if isinstance(node, dict) and leaf in node:
            if not saved:
                raise ConfigError(f"{key} was retired: {instead}")
            del node[leaf]
    for old, new in RENAMED_KEYS.items():
        (section, old_leaf), (_, new_leaf) = old.split("."), new.split(".")
        node = out.get(section)
        if isinstance(node, dict) and old_leaf in node:
            if new_leaf in node:
                raise ConfigError(f"{old} is the old name of {new}: give only {new}")
            node[new_leaf] = node.pop(old_leaf)
    return out


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, *, saved: bool = False
) -> MetaTrainConfig:
    """Build and validate a config from a (YAML) mapping plus ``key=value`` overrides;
    ``saved``: ``data`` is a checkpoint's config (retired keys are dropped, not refused)."""
    data = _rename_old_keys(data or {}, saved=saved)
    for text in overrides or []:
        key, value = parse_override(text)
        if key in RETIRED_KEYS:
            raise ConfigError(f"{key} was retired: {RETIRED_KEYS[key]}")
        set_dotted(MetaTrainConfig, data, RENAMED_KEYS.get(key, key), value)
    return build(MetaTrainConfig, data)


def load_config(source: str | Path, overrides: list[str] | None = None) -> MetaTrainConfig:
    """A config from a name (``default``, ``paper``...) or a YAML path, plus overrides."""
    path = resolve_config_path(source)
    try:
        return config_from_dict(load_yaml(path), overrides)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (config: {path})") from None


# --------------------------------------------------------------------------------------------
# Finding named configs: the repository's configs/meta_train/, else a copy inside the package


def config_dirs() -> list[Path]:
    """Folders searched for named configs, in order."""
    package_dir = Path(__file__).resolve().parents[1]  # meta_train/, above configuration/
    dirs = [
        package_dir.parent / "configs" / "meta_train",  # a checkout or an editable install
        package_dir
        / "_configs"
        / "meta_train",  # the copy inside a wheel (pyproject force-include)
    ]
    return [d for d in dirs if d.is_dir()]


def available_configs() -> list[str]:
    return sorted({p.stem for d in config_dirs() for p in d.glob("*.yaml")})


def resolve_config_path(source: str | Path) -> Path:
    """A YAML path as given, or a config name looked up in :func:`config_dirs`."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a YAML file or a config name")
    name = str(source)
    if name.endswith((".yaml", ".yml")) or "/" in name:
        raise ConfigError(f"config file {str(path)!r} does not exist")
    for folder in config_dirs():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    names = available_configs()
    near = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    searched = ", ".join(str(d) for d in config_dirs()) or "(no config folder found)"
    raise ConfigError(f"unknown config {name!r}.{hint} Available: {names}; searched {searched}")


def dump_yaml(cfg: MetaTrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
