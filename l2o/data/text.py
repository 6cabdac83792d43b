"""Byte-level text that every machine has: the Python standard library's own source files.

The files are the ``*.py`` directly in ``sysconfig.get_paths()["stdlib"]``, in sorted order,
concatenated; the first ``TRAIN_BYTES`` bytes are the training text and the next ``TEST_BYTES``
the test text (so the split falls at one position: the test text comes from files after the
training text's). Each split is cut into windows of ``CONTEXT + 1`` bytes that overlap by one
(``[N, CONTEXT + 1]``, a view of the byte stream); the inputs are a window's first ``CONTEXT``
bytes and the targets its last ``CONTEXT`` (the next byte at every position), both views of it,
so minibatches are drawn by index like images. The text is the same on every machine with the
same Python version (the standard library's sources change between versions).
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path

import torch

CONTEXT = 64
TRAIN_BYTES = 1 << 20
TEST_BYTES = 1 << 16


def stdlib_source_files() -> list[Path]:
    """The standard library's top-level ``*.py`` files, sorted by name."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(folder.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"stdlib_bytes: no *.py files in the standard library at {folder}")
    return files


def stdlib_text(size: int) -> bytes:
    """The first ``size`` bytes of the sorted source files, concatenated."""
    parts, total = [], 0
    for path in stdlib_source_files():
        parts.append(path.read_bytes())
        total += len(parts[-1])
        if total >= size:
            return b"".join(parts)[:size]
    raise ValueError(f"stdlib_bytes: the standard library holds {total} bytes of *.py, need {size}")


def byte_windows(text: bytes, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets ``[N, context]`` (int64): views of the windows
    ``[N, context + 1]`` of ``text`` with stride ``context`` (the incomplete tail dropped)."""
    stream = torch.frombuffer(bytearray(text), dtype=torch.uint8).to(torch.int64)
    windows = stream.unfold(0, context + 1, context)
    return windows[:, :-1], windows[:, 1:]


@functools.lru_cache(maxsize=1)
def stdlib_byte_windows() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """``((x_train, y_train), (x_test, y_test))`` of the ``stdlib_bytes`` dataset."""
    text = stdlib_text(TRAIN_BYTES + TEST_BYTES)
    return byte_windows(text[:TRAIN_BYTES], CONTEXT), byte_windows(text[TRAIN_BYTES:], CONTEXT)
