"""YAML mapping + ``key=value`` overrides → nested dataclasses, with errors that name the key.

The engine knows nothing about meta-training: ``build(Root, data, overrides)`` works for any tree
of dataclasses whose fields are annotated with the types :func:`coerce` supports. Range checks
live next to the fields they check (each section's ``__post_init__``, using :func:`require`), so
they run whoever builds the dataclass: this engine, a test or a script.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem, reported before any heavy work starts."""


def require(ok: bool, key: str, message: str, value: Any) -> None:
    """Raise ``ConfigError("<key> <message>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} {message}, got {value!r}")


def require_positive(key: str, value: float | int | None) -> None:
    """``value`` is None (unset) or a finite number > 0."""
    if value is not None:
        require(value > 0 and math.isfinite(value), key, "must be positive", value)


def require_non_negative(key: str, value: float | int) -> None:
    require(value >= 0 and math.isfinite(value), key, "must be >= 0", value)


def plain(value: Any) -> Any:
    """Dicts, lists and scalars only (tuples become lists): YAML/JSON/``weights_only``-safe."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type, prefix: str = "") -> list[str]:
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


def build(cls: type, data: dict[str, Any], prefix: str = "", root: type | None = None) -> Any:
    """``cls(**data)`` with nested sections built recursively and every value coerced to its
    field's type; unknown keys are errors with near-miss suggestions from ``root``'s keys."""
    root = root or cls
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key_error(f"{prefix}{key}", all_keys(root))
    values = {}
    for name in names & set(data):
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            section = data[name] if data[name] is not None else {}
            values[name] = build(tp, section, f"{prefix}{name}.", root)
        else:
            values[name] = coerce(f"{prefix}{name}", data[name], tp)
    return cls(**values)


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` updated recursively by ``update`` (``kwargs`` dicts are replaced whole)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = deep_merge(out[key], value)
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


def set_dotted(root: type, data: dict, key: str, value: Any) -> None:
    """Write ``value`` at dotted ``key``, validating the path against ``root``'s schema."""
    parts = key.split(".")
    cls: Any = root
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
            raise _unknown_key_error(key if depth == len(parts) - 1 else path, all_keys(root))
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


MAX_YAML_VALUES = 100_000  # a config has hundreds; anchors that expand past this are a bomb


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConfigError(f"key {key!r} is given twice (lines {seen[key]} and {line})")
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _count_values(data: Any, budget: int) -> int:
    """Values in ``data`` with every alias expanded, counting down from ``budget`` (stops at 0)."""
    stack = [data]
    while stack and budget > 0:
        item = stack.pop()
        budget -= 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return budget


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parser error in one line: what it met and where (its message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}" + (f" ({context})" if context else "")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a UTF-8 file; duplicate keys and anchor bombs are refused."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a YAML file or a config name")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    if _count_values(data, MAX_YAML_VALUES) <= 0:
        raise ConfigError(
            f"{path}: expands to more than {MAX_YAML_VALUES} values (anchors and aliases "
            "nested into a bomb?)"
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data
