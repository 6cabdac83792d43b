"""Datasets as tensors on the device, and seeded minibatches by index."""

from l2o.data.datasets import (
    DATASET_SHAPES,
    DEBIAN_FASHION_MNIST_DIR,
    TOKEN_DATASETS,
    CorruptDatasetError,
    Dataset,
    DatasetNotFoundError,
    available_datasets,
    data_root,
    load_dataset,
    read_idx,
    stratified_split,
    train_order,
)
from l2o.data.sampler import BatchSampler

__all__ = [
    "DATASET_SHAPES",
    "DEBIAN_FASHION_MNIST_DIR",
    "TOKEN_DATASETS",
    "BatchSampler",
    "CorruptDatasetError",
    "Dataset",
    "DatasetNotFoundError",
    "available_datasets",
    "data_root",
    "load_dataset",
    "read_idx",
    "stratified_split",
    "train_order",
]
