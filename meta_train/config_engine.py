"""YAML mapping + ``key=value`` overrides → nested dataclasses, with errors that name the key.

The engine knows nothing about meta-training: ``build(Root, data, overrides)`` works for any tree
of dataclasses whose fields are annotated with the types :func:`coerce` supports. Range checks
live next to the fields they check (each section's ``__post_init__``, using :func:`require`), so
they run whoever builds the dataclass: this engine, a test or a script.
"""

from __future__ import annotations

import math
from typing import Any


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
