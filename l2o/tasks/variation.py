"""How a case's pipeline differs from its registered task's: one frozen, validated object.

The same fields, with the same names and meanings, are a suite case's keys
(``meta_train/evaluation/suites.py``), the meta-training config's ``task`` section and its family
members' keys (``meta_train/configuration/schema.py``), and ``get_task(..., variation=)``'s
argument, so a
variation is data, never code. Each default is the registered task's own pipeline:

========== ====================== ==========================================================
field      values                 meaning
========== ====================== ==========================================================
batch_size integer > 0 (task's)   examples per minibatch
input      standardized | raw     per-channel standardized inputs (the default) or raw pixels
                                  in [0, 1]; image tasks only
input_scale number > 0 (1)        multiplies the preprocessed inputs (after ``input``)
init_scale number > 0 (1)         multiplies every parameter of the freshly built model
train_size integer > 0 (all)      keep only this many training examples: a fixed, class-
                                  stratified prefix (``l2o.data.train_order``); error if more
                                  than the data holds
replacement true | false (false)  draw minibatches with replacement (uniform, independent) or
                                  without (epoch-shuffled)
width      integer > 0 (task's)   the hidden width of every layer (MLPs; the transformer's
                                  model width)
depth      integer > 0 (task's)   the number of hidden layers (MLPs; the transformer's blocks)
========== ====================== ==========================================================
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from l2o.data import Dataset

INPUTS = ("standardized", "raw")


@dataclass(frozen=True)
class TaskVariation:
    """The variation fields (see the module docstring); errors name the field."""

    batch_size: int | None = None
    input: str = "standardized"
    input_scale: float = 1.0
    init_scale: float = 1.0
    train_size: int | None = None
    replacement: bool = False
    width: int | None = None
    depth: int | None = None

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {list(INPUTS)}, got {self.input!r}")
        for key in ("input_scale", "init_scale"):
            value = getattr(self, key)
            if not _is_number(value) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
        for key in ("batch_size", "train_size", "width", "depth"):
            value = getattr(self, key)
            if value is not None and not (_is_int(value) and value > 0):
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(self.replacement, bool):
            raise ValueError(f"replacement must be true or false, got {self.replacement!r}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> TaskVariation:
        """The variation fields of ``raw`` (a suite case, a config section); other keys ignored."""
        return cls(**{key: raw[key] for key in VARIATION_KEYS if key in raw})

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the registered task's pipeline, in field order."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }

    @property
    def id(self) -> str:
        """``,b32,input=raw,init_scale=2``-style suffix of a case id ("" for no change)."""
        return describe(self.changes())

    @property
    def data_key(self) -> tuple:
        """What the variation does to the data: equal keys, equal prepared datasets."""
        return (self.input, self.input_scale, self.train_size, self.replacement)

    def prepare(self, data: Dataset) -> Dataset:
        """The data side, after ``input`` chose the preprocessing: scale, subset, sampling."""
        if self.input_scale != 1:
            data = data.with_inputs_scaled(self.input_scale)
        if self.train_size is not None:
            data = data.with_train_size(self.train_size)
        if self.replacement:
            data = data.with_replacement(True)
        return data


VARIATION_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TaskVariation))
#: each field's type, for parsers that convert text (YAML's ``1e-3``, a command line's ``2``)
VARIATION_TYPES: dict[str, Any] = typing.get_type_hints(TaskVariation)


def describe(fields: Mapping[str, Any]) -> str:
    """``fields`` as an id suffix: ``,b{n}`` for a batch size (the ids of earlier suites),
    ``,key=value`` for the rest."""
    parts = []
    for key in VARIATION_KEYS:
        if key not in fields:
            continue
        value = fields[key]
        if key == "batch_size":
            parts.append(f",b{value}")
        elif isinstance(value, bool):
            parts.append(f",{key}={str(value).lower()}")
        elif isinstance(value, float):
            parts.append(f",{key}={value:g}")
        else:
            parts.append(f",{key}={value}")
    return "".join(parts)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
