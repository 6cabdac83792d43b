"""The typed meta-training config: YAML file + ``key=value`` overrides → validated dataclasses.

Every value a run needs is a field here, so that a misspelt key, a wrong type or an out-of-range
value fails in milliseconds, naming the key, before data is loaded or a network is built. The
YAML files in ``configs/meta_train/`` mirror these dataclasses section by section; overrides use
dotted keys (``meta_optimizer.lr=3e-3``) in either the ``key=value`` or the ``--key=value`` form
(the one ``wandb agent`` passes).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from meta_train.config_engine import ConfigError
from meta_train.estimators import available_estimators
from meta_train.unroll import UnrollConfig

# Keys renamed since older configs and checkpoints were written: old dotted key → new one.
RENAMED_KEYS = {"unroll.order": "unroll.estimator"}


# --------------------------------------------------------------------------------------------
# Sections


@dataclass
class TaskConfig:
    """The optimizee: a registered task, optionally on another same-shaped dataset."""

    name: str = "mnist_mlp_sigmoid"
    dataset: str | None = "mnist5k"  # None: the task's own dataset
    batch_size: int | None = None  # None: the task's own (128)


@dataclass
class DataConfig:
    """Where datasets live; ``root`` None means ``$L2O_DATA`` or ``~/.cache/l2o/data``."""

    root: str | None = None
    download: bool = False


@dataclass
class OptimizerConfig:
    """The learned optimizer: an ``l2o.optimizers`` architecture name and its constructor kwargs."""

    name: str = "lstm"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetaOptimizerConfig:
    """Adam on the learned optimizer's weights, with meta-gradient norm clipping."""

    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 1.0  # None: no clipping


@dataclass
class ScheduleConfig:
    """epochs × runs_per_epoch runs; each run trains ``meta_batch`` fresh optimizees for
    ``horizon`` inner steps (T), i.e. ``horizon / unroll.length`` meta-steps."""

    epochs: int = 5
    runs_per_epoch: int = 20
    horizon: int = 200
    meta_batch: int = 1


@dataclass
class ValidationConfig:
    """Held-out meta-validation that picks ``best.pt``: fresh optimizees (seeds disjoint from
    training and meta-testing) trained by the frozen optimizer through ``l2o.training``."""

    enabled: bool = True
    every_runs: int = 0  # 0: at the end of every epoch
    steps: int = 200
    seeds: int = 2
    first_seed: int = 500


@dataclass
class MetaTestConfig:
    """The final comparison of the frozen learned optimizer with baselines at their best grid LR."""

    enabled: bool = True
    steps: int = 200
    seeds: int = 10
    first_seed: int = 1000
    baselines: list[str] = field(default_factory=lambda: ["sgd", "adam"])
    lr_grid: list[float] | None = None  # None: the paper's grid, l2o.training.PAPER_LR_GRID
    grid_steps: int = 50
    grid_seeds: int = 3
    checkpoint: Literal["best", "last"] = "best"
    report_steps: list[int] = field(default_factory=list)  # extra table columns: loss at step k
    plot: bool = True


@dataclass
class RegularizationWeights:
    rescale: float = 1.0 / 3.0
    scale: float = 1.0 / 3.0
    translation: float = 1.0 / 3.0


@dataclass
class RegularizationConfig:
    """A penalty on the updates added to the meta-loss (the paper's symmetry regularizer)."""

    kind: Literal["none", "symmetry", "norm"] = "none"
    reg_mul: float = 0.0
    weights: RegularizationWeights = field(default_factory=RegularizationWeights)


@dataclass
class WandbConfig:
    """W&B logging. ``offline`` and ``disabled`` never touch the network; ``$WANDB_MODE``, when
    set, overrides ``mode`` (tests and CI set it to ``disabled``)."""

    mode: Literal["online", "offline", "disabled"] = "disabled"
    project: str = "l2o"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None
    group: str | None = None


@dataclass
class ReliabilityConfig:
    """Non-finite handling: a bad meta-step is skipped; this many in a row stop the run."""

    max_consecutive_nonfinite: int = 5


@dataclass
class LoggingConfig:
    every: int = 1  # meta-steps between console/JSONL/W&B records
    progress: bool = True  # tqdm bar


@dataclass
class CheckpointConfig:
    every: int = 10  # meta-steps between ``last.pt`` writes (and always at the end of a run)


@dataclass
class MetaTrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    unroll: UnrollConfig = field(default_factory=UnrollConfig)  # meta_train.unroll
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
    threads: int | None = None  # torch.set_num_threads; None: torch's default

    @property
    def meta_steps_per_run(self) -> int:
        return self.schedule.horizon // self.unroll.length

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON/``weights_only``-safe containers (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


# --------------------------------------------------------------------------------------------
# Building from dicts, with type coercion


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type = MetaTrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (``optimizer.kwargs`` stands for its free-form dict)."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key_error(key: str, candidates: list[str]) -> ConfigError:
    """Near matches: the same leaf in another section, similar leaves in the same section,
    similar section names."""
    split = lambda k: k.rsplit(".", 1) if "." in k else ("", k)
    section, leaf = split(key)
    sections = sorted({split(c)[0] for c in candidates} - {""})
    keyed = [(c, *split(c)) for c in candidates]
    near = [c for c, _, lf in keyed if lf == leaf and c != key]
    siblings = [lf for _, sec, lf in keyed if sec == section]
    near += [
        f"{section}.{lf}" if section else lf
        for lf in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)
    ]
    if section not in sections:  # a misspelt section (or a section given as a value)
        near += difflib.get_close_matches(section or leaf, sections, n=2, cutoff=0.6)
    near += [
        c for c in difflib.get_close_matches(key, candidates, n=3, cutoff=0.75) if c not in near
    ]
    near = list(dict.fromkeys(near))[:4]
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    return ConfigError(f"unknown config key {key!r}.{hint}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` converted to type ``tp`` where that is lossless, else a ConfigError naming ``key``.

    Strings are accepted for numbers and booleans (YAML reads ``1e-3`` as a string, and command
    line values arrive as strings); an int is accepted where a float is expected, never the reverse.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, _UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple:
            if len(args) != len(value) and not (len(args) == 2 and args[1] is Ellipsis):
                raise ConfigError(f"{key} must have {len(args)} elements, got {list(value)}")
            item_types = [args[0]] * len(value) if args[1:] == (Ellipsis,) else args
            return tuple(
                coerce(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, item_types))
            )
        return [coerce(f"{key}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"{key} must be a bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r} ({type(value).__name__})")
    raise TypeError(f"config schema: unsupported type {_type_name(tp)} for {key}")  # a schema bug


_UnionType = type(int | None)


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key_error(f"{prefix}{key}", all_keys())
    values = {}
    for name in names & set(data):
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(
                tp, data[name] if data[name] is not None else {}, f"{prefix}{name}."
            )
        else:
            values[name] = coerce(f"{prefix}{name}", data[name], tp)
    return cls(**values)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` or ``--key=value`` → (dotted key, YAML-parsed value)."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ConfigError(
            f"override {text!r} must look like key=value or --key=value "
            "(e.g. meta_optimizer.lr=3e-3)"
        )
    key, raw = body.split("=", 1)
    key = key.strip().replace("-", "_") if not key.startswith("optimizer.kwargs.") else key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    if raw.strip() == "None":  # how ``wandb agent`` writes a null
        return key, None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    """Write ``value`` at dotted ``key``, validating the path against the schema as it goes."""
    parts = key.split(".")
    cls: Any = MetaTrainConfig
    node = data
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        if cls is dict:  # inside optimizer.kwargs: free-form, checked against the constructor
            if depth != len(parts) - 1:
                node = node.setdefault(part, {})
                continue
            node[part] = value
            return
        names = {f.name: f for f in dataclasses.fields(cls)}
        if part not in names:
            raise _unknown_key_error(key if depth == len(parts) - 1 else path, all_keys())
        hint = _hints(cls)[part]
        if depth == len(parts) - 1:
            node[part] = value
            return
        if dataclasses.is_dataclass(hint):
            cls = hint
        elif typing.get_origin(hint) is dict:
            cls = dict
        else:
            raise ConfigError(f"{path} is a value, not a section: cannot set {key!r}")
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child


def _rename_old_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the :data:`RENAMED_KEYS` moved to their new names (old configs and
    checkpoints keep working); giving both names is an error."""
    out = _deep_merge({}, data)
    for old, new in RENAMED_KEYS.items():
        (section, old_leaf), (_, new_leaf) = old.split("."), new.split(".")
        node = out.get(section)
        if isinstance(node, dict) and old_leaf in node:
            if new_leaf in node:
                raise ConfigError(f"{old} is the old name of {new}: give only {new}")
            node[new_leaf] = node.pop(old_leaf)
    return out


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> MetaTrainConfig:
    """Build and validate a config from a (YAML) mapping plus ``key=value`` overrides."""
    data = _rename_old_keys(data or {})
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(data, RENAMED_KEYS.get(key, key), value)
    cfg = _build(MetaTrainConfig, data)
    validate(cfg)
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


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
    package_dir = Path(__file__).resolve().parent
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


# --------------------------------------------------------------------------------------------
# Validation: ranges here; names (task, optimizer, baselines) in validate_names


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}, got {value!r}")


def _positive(key: str, value: float | int | None) -> None:
    if value is not None:
        _require(value > 0 and math.isfinite(value), key, "must be positive", value)


def _non_negative(key: str, value: float | int) -> None:
    _require(value >= 0 and math.isfinite(value), key, "must be >= 0", value)


SEED_SPACE = 2**20  # validation and meta-test seeds live below this; training seeds are 63-bit


def validate(cfg: MetaTrainConfig) -> None:
    """Ranges and cross-field constraints; every message names the key."""
    _positive("task.batch_size", cfg.task.batch_size)
    _require(
        cfg.unroll.estimator in available_estimators(),
        "unroll.estimator",
        f"must be one of {available_estimators()}",
        cfg.unroll.estimator,
    )
    m = cfg.meta_optimizer
    _positive("meta_optimizer.lr", m.lr)
    for i, beta in enumerate(m.betas):
        _require(0.0 <= beta < 1.0, f"meta_optimizer.betas[{i}]", "must be in [0, 1)", beta)
    _positive("meta_optimizer.eps", m.eps)
    _non_negative("meta_optimizer.weight_decay", m.weight_decay)
    _positive("meta_optimizer.grad_clip_norm", m.grad_clip_norm)
    s = cfg.schedule
    for key in ("epochs", "runs_per_epoch", "horizon", "meta_batch"):
        _positive(f"schedule.{key}", getattr(s, key))
    if cfg.unroll.length > s.horizon:
        raise ConfigError(
            f"unroll.length ({cfg.unroll.length}) must not exceed schedule.horizon ({s.horizon})"
        )
    if s.horizon % cfg.unroll.length:
        raise ConfigError(
            f"schedule.horizon ({s.horizon}) must be a multiple of unroll.length "
            f"({cfg.unroll.length}) so that every run has whole truncations"
        )
    v = cfg.validation
    _non_negative("validation.every_runs", v.every_runs)
    _positive("validation.steps", v.steps)
    _positive("validation.seeds", v.seeds)
    _non_negative("validation.first_seed", v.first_seed)
    t = cfg.meta_test
    _positive("meta_test.steps", t.steps)
    _positive("meta_test.seeds", t.seeds)
    _non_negative("meta_test.first_seed", t.first_seed)
    _positive("meta_test.grid_steps", t.grid_steps)
    _positive("meta_test.grid_seeds", t.grid_seeds)
    for i, k in enumerate(t.report_steps):
        _require(1 <= k <= t.steps, f"meta_test.report_steps[{i}]", f"must be in [1, {t.steps}]", k)
    if t.lr_grid is not None:
        _require(len(t.lr_grid) > 0, "meta_test.lr_grid", "must not be empty", t.lr_grid)
        for i, lr in enumerate(t.lr_grid):
            _positive(f"meta_test.lr_grid[{i}]", lr)
    _require(
        len(set(t.baselines)) == len(t.baselines),
        "meta_test.baselines",
        "has duplicates",
        t.baselines,
    )
    val_seeds = set(range(v.first_seed, v.first_seed + v.seeds))
    test_seeds = set(range(t.first_seed, t.first_seed + t.seeds))
    grid_seeds = set(range(t.grid_seeds))
    for key, seeds in (("validation", val_seeds), ("meta_test", test_seeds)):
        _require(
            max(seeds) < SEED_SPACE,
            f"{key}.first_seed",
            f"+ seeds must be < {SEED_SPACE}",
            max(seeds),
        )
    if val_seeds & test_seeds or val_seeds & grid_seeds or test_seeds & grid_seeds:
        raise ConfigError(
            "validation seeds [validation.first_seed, +seeds), meta-test seeds "
            "[meta_test.first_seed, +seeds) and grid-search seeds [0, meta_test.grid_seeds) "
            f"must be disjoint: held-out means held out (got {sorted(val_seeds)[:3]}..., "
            f"{sorted(test_seeds)[:3]}..., {sorted(grid_seeds)[:3]}...)"
        )
    r = cfg.regularization
    _non_negative("regularization.reg_mul", r.reg_mul)
    for key in ("rescale", "scale", "translation"):
        _non_negative(f"regularization.weights.{key}", getattr(r.weights, key))
    if r.kind != "none" and r.reg_mul == 0:
        raise ConfigError(f"regularization.kind is {r.kind!r} but regularization.reg_mul is 0")
    _positive("reliability.max_consecutive_nonfinite", cfg.reliability.max_consecutive_nonfinite)
    _positive("logging.every", cfg.logging.every)
    _positive("checkpoint.every", cfg.checkpoint.every)
    _positive("threads", cfg.threads)
    _require(cfg.seed >= 0, "seed", "must be >= 0", cfg.seed)
    _require(
        bool(cfg.name) and "/" not in cfg.name, "name", "must be a non-empty file name", cfg.name
    )
    device = cfg.device
    _require(
        device in ("cpu", "cuda", "auto", "mps") or device.startswith("cuda:"),
        "device",
        "must be cpu, cuda, cuda:N, mps or auto",
        device,
    )


def validate_names(cfg: MetaTrainConfig) -> None:
    """Names that need the registries: task, dataset, learned optimizer and its kwargs, baselines.

    Imports the libraries but builds nothing heavy; the data's presence is checked by loading it
    (see ``trainer.prepare``), still before meta-training starts.
    """
    from l2o.data import available_datasets
    from l2o.tasks import available_tasks, get_task

    if cfg.task.name not in available_tasks():
        near = difflib.get_close_matches(cfg.task.name, available_tasks(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(
            f"task.name: unknown task {cfg.task.name!r}.{hint} Available: {available_tasks()}"
        )
    if cfg.task.dataset is not None and cfg.task.dataset not in available_datasets():
        raise ConfigError(
            f"task.dataset: unknown dataset {cfg.task.dataset!r}; available: {available_datasets()}"
        )
    try:
        get_task(cfg.task.name, dataset=cfg.task.dataset, batch_size=cfg.task.batch_size)
    except ValueError as exc:
        raise ConfigError(f"task: {exc}") from None
    validate_optimizer(cfg.optimizer)
    if cfg.meta_test.enabled and cfg.meta_test.baselines:
        import baselines

        known = baselines.available()
        for name in cfg.meta_test.baselines:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=3)
                hint = f" Did you mean {', '.join(near)}?" if near else ""
                raise ConfigError(
                    f"meta_test.baselines: unknown baseline {name!r}.{hint} Available: {known}"
                )


def validate_optimizer(opt: OptimizerConfig) -> None:
    """The learned optimizer's name is registered and every kwarg is a constructor parameter."""
    import l2o.optimizers as lo

    known = list(lo.available_architectures())
    if opt.name not in known:
        near = difflib.get_close_matches(opt.name, known, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(
            f"optimizer.name: unknown learned optimizer {opt.name!r}.{hint} Available: {known}"
        )
    signature = inspect.signature(type(lo.create(opt.name)))  # a default network is tiny
    params = {
        n: p
        for n, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
    }
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for key, value in opt.kwargs.items():
        if key not in params:
            if accepts_any:
                continue
            near = difflib.get_close_matches(key, list(params), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"optimizer.kwargs.{key}: {opt.name!r} takes no argument {key!r}.{hint} "
                f"It takes: {sorted(params)}"
            )
        default = params[key].default
        if default is not inspect.Parameter.empty and default is not None and value is not None:
            expected = type(default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                opt.kwargs[key] = float(value)
            elif expected in (int, float, bool, str) and not isinstance(value, expected):
                opt.kwargs[key] = coerce(f"optimizer.kwargs.{key}", value, expected)


def dump_yaml(cfg: MetaTrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
