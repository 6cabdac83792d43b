"""Datasets as tensors on the device, and seeded minibatches by index."""

from l2o.data.datasets import (
    DATASET_SHAPES,
    DEBIAN_FASHION_MNIST_DIR,
    CorruptDatasetError,
    Dataset,
    DatasetNotFoundError,
    available_datasets,
    data_root,
    load_dataset,
    read_idx,
    stratified_split,
)
from l2o.data.sampler import BatchSampler

__all__ = [
    "DATASET_SHAPES",
    "DEBIAN_FASHION_MNIST_DIR",
    "BatchSampler",
    "CorruptDatasetError",
    "Dataset",
    "DatasetNotFoundError",
    "available_datasets",
    "data_root",
    "load_dataset",
    "read_idx",
    "stratified_split",
]
