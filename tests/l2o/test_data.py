import gzip
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import l2o.data.datasets as datasets_module
from l2o.data import (
    DEBIAN_FASHION_MNIST_DIR,
    BatchSampler,
    CorruptDatasetError,
    DatasetNotFoundError,
    load_dataset,
    read_idx,
    stratified_split,
    train_order,
)
from l2o.data import text as text_module


@pytest.fixture
def fresh_cache():
    """Loads are cached per process; tests that change what is on disk start from a clean cache."""
    datasets_module._load_raw.cache_clear()
    datasets_module._load_cached.cache_clear()
    yield
    datasets_module._load_raw.cache_clear()
    datasets_module._load_cached.cache_clear()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 data in the IDX format torchvision's MNIST loader reads."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_mnist5k_shapes_dtypes_and_classes():
    ds = load_dataset("mnist5k")
    assert ds.name == "mnist5k"
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.num_classes == 10
    assert torch.equal(ds.y_train.bincount(), torch.full((10,), 400))
    assert torch.equal(ds.y_test.bincount(), torch.full((10,), 100))
    # normalized with MNIST's statistics: roughly standard
    assert abs(float(ds.x_train.mean())) < 0.05 and abs(float(ds.x_train.std()) - 1) < 0.05


def test_mnist5k_unnormalized_pixels_in_unit_interval():
    ds = load_dataset("mnist5k", normalize=False)
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0


def test_stratified_split_is_deterministic_disjoint_and_complete():
    labels = torch.arange(10).repeat_interleave(50)
    train_a, test_a = stratified_split(labels, 40, seed=0)
    train_b, test_b = stratified_split(labels, 40, seed=0)
    assert torch.equal(train_a, train_b) and torch.equal(test_a, test_b)
    assert set(train_a.tolist()).isdisjoint(test_a.tolist())
    assert sorted(train_a.tolist() + test_a.tolist()) == list(range(500))
    assert torch.equal(labels[train_a].bincount(), torch.full((10,), 40))
    train_c, _ = stratified_split(labels, 40, seed=1)
    assert not torch.equal(train_a, train_c)


def test_mnist_falls_back_to_mnist5k_with_a_warning_every_time(tmp_path, fresh_cache):
    for _ in range(2):
        with pytest.warns(UserWarning, match="falling back to 'mnist5k'"):
            ds = load_dataset("mnist", root=tmp_path)
        assert ds.name == "mnist5k"


def test_torchvision_mnist_loader_on_real_digits(tmp_path, fresh_cache):
    """The real torchvision MNIST loader, fed the real digits we have, in MNIST's own format."""
    ref = load_dataset("mnist5k", normalize=False)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    to_u8 = lambda x: (x.squeeze(1) * 255).round().to(torch.uint8).numpy()
    write_idx(raw / "train-images-idx3-ubyte", to_u8(ref.x_train))
    write_idx(raw / "train-labels-idx1-ubyte", ref.y_train.numpy().astype(np.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", to_u8(ref.x_test))
    write_idx(raw / "t10k-labels-idx1-ubyte", ref.y_test.numpy().astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the full loader found the files
        ds = load_dataset("mnist", root=tmp_path, normalize=False)
    assert ds.name == "mnist"
    assert torch.equal(ds.x_train, ref.x_train) and torch.equal(ds.y_test, ref.y_test)


def _require_debian_fashion():
    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("L2O_REQUIRE_FASHION_MNIST"):
            pytest.fail(f"Debian's dataset-fashion-mnist is not in {DEBIAN_FASHION_MNIST_DIR}")
        pytest.skip("apt-get install dataset-fashion-mnist to run this test")


def test_fashion_mnist_from_debian_package(tmp_path, fresh_cache, monkeypatch):
    _require_debian_fashion()
    monkeypatch.setenv("L2O_DATA", str(tmp_path))  # no torchvision copy there
    ds = load_dataset("fashion_mnist")
    assert ds.name == "fashion_mnist"
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.equal(ds.y_train.bincount(), torch.full((10,), 6000))
    assert torch.equal(ds.y_test.bincount(), torch.full((10,), 1000))
    assert abs(float(ds.x_train.mean())) < 0.01 and abs(float(ds.x_train.std()) - 1) < 0.01


def test_torchvision_fashion_mnist_loader_on_debian_files(tmp_path, fresh_cache):
    _require_debian_fashion()
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for src in DEBIAN_FASHION_MNIST_DIR.glob("*-ubyte.gz"):
        with gzip.open(src) as fin, open(raw / src.name[:-3], "wb") as fout:
            shutil.copyfileobj(fin, fout)
    via_torchvision = load_dataset("fashion_mnist", root=tmp_path)
    via_debian = load_dataset("fashion_mnist", root=tmp_path / "elsewhere")
    assert torch.equal(via_torchvision.x_test, via_debian.x_test)
    assert torch.equal(via_torchvision.y_train, via_debian.y_train)


def test_missing_fashion_mnist_names_paths_and_remedy(tmp_path, fresh_cache, monkeypatch):
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.delenv("L2O_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "no-debian" in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message


def test_missing_cifar10_is_a_clear_error(tmp_path, fresh_cache):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*download=True"):
        load_dataset("cifar10", root=tmp_path)


def test_torchvision_cifar10_loader_layout(tmp_path, fresh_cache, monkeypatch):
    """torchvision's CIFAR-10 parser on files in its on-disk format (md5 check bypassed, since
    the real archive cannot be downloaded here)."""
    import torchvision.datasets as tvd

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, 4)),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    ds = load_dataset("cifar10", root=tmp_path, normalize=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]
    assert torch.equal((ds.x_train[0] * 255).round().to(torch.uint8).flatten(), torch.tensor(first))


def test_unknown_dataset_suggests_near_match():
    with pytest.raises(ValueError, match="'mnist5k'"):
        load_dataset("mnist_5k")


def test_read_idx_rejects_foreign_file(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    write_idx(path, np.zeros((3, 2, 2), np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)


# --- sampler ---------------------------------------------------------------------------------


def _toy(n=10):
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return x, torch.arange(n)


def test_sampler_is_seeded_and_covers_each_epoch_without_replacement():
    x, y = _toy(12)
    a, b, c = BatchSampler(x, y, 4, seed=1), BatchSampler(x, y, 4, seed=1), BatchSampler(x, y, 4, 2)
    epoch_a = [a.next()[1] for _ in range(3)]
    assert all(batch.shape == (4,) for batch in epoch_a)
    assert sorted(torch.cat(epoch_a).tolist()) == list(range(12))
    assert all(torch.equal(u, b.next()[1]) for u in epoch_a)
    assert not all(torch.equal(u, c.next()[1]) for u in epoch_a)
    assert a.epoch == 0
    a.next()
    assert a.epoch == 1


def test_sampler_drops_incomplete_tail_so_batches_keep_their_shape():
    x, y = _toy(10)
    sampler = BatchSampler(x, y, 4, seed=0)
    assert sampler.batches_per_epoch == 2
    assert all(sampler.next()[0].shape == (4, 1) for _ in range(7))


def test_sampler_state_round_trip_through_weights_only_load(tmp_path):
    x, y = _toy(50)
    sampler = BatchSampler(x, y, 8, seed=3)
    for _ in range(9):
        sampler.next()
    torch.save(sampler.state_dict(), tmp_path / "s.pt")
    expected = [sampler.next()[1] for _ in range(10)]
    restored = BatchSampler(x, y, 8, seed=999)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert all(torch.equal(e, restored.next()[1]) for e in expected)


def test_sampler_rejects_bad_batch_sizes():
    x, y = _toy(5)
    with pytest.raises(ValueError, match="positive"):
        BatchSampler(x, y, 0, seed=0)
    with pytest.raises(ValueError, match="exceeds"):
        BatchSampler(x, y, 6, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(x, y, 2, 0).load_state_dict(BatchSampler(x, y, 3, 0).state_dict())


def test_dataset_sampler_batches_live_on_the_data_device():
    ds = load_dataset("mnist5k")
    xb, yb = ds.sampler(128, seed=0).next()
    assert xb.shape == (128, 1, 28, 28) and yb.shape == (128,)
    assert xb.device == ds.device
    with pytest.raises(ValueError, match="split"):
        ds.sampler(8, 0, split="validation")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dataset_on_cuda():
    ds = load_dataset("mnist5k", device="cuda")
    xb, _ = ds.sampler(16, seed=0).next()
    assert xb.is_cuda


def test_read_idx_names_a_truncated_gzip_or_header(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + b"\x00" * 200)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(CorruptDatasetError, match=r"x-idx3-ubyte\.gz is not a complete gzip"):
        read_idx(path)
    header_only = tmp_path / "h-idx3-ubyte"
    header_only.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(CorruptDatasetError, match="truncated inside its header"):
        read_idx(header_only)


def test_damaged_torchvision_mnist_is_a_clear_error_not_a_fallback(tmp_path, fresh_cache):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x12\x34" * 100)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x12\x34" * 100)
    with pytest.raises(CorruptDatasetError, match=r"mnist: the files under .* are damaged"):
        load_dataset("mnist", root=tmp_path)


def test_download_without_a_network_is_one_clear_line(tmp_path, fresh_cache, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for name in ("mnist", "cifar10"):  # mnist: no silent fallback when a download was asked for
        with pytest.raises(DatasetNotFoundError, match=rf"{name}: could not download into") as info:
            load_dataset(name, root=tmp_path / name, download=True)
        assert len(str(info.value).splitlines()) == 1


# --- digits and stdlib_bytes ------------------------------------------------------------------


def test_digits_is_scikit_learns_real_digits_split_by_class():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.x_train.shape == (1400, 1, 8, 8) and ds.x_test.shape == (397, 1, 8, 8)
    assert torch.equal(ds.y_train.bincount(), torch.full((10,), 140))
    assert ds.y_test.numel() + ds.y_train.numel() == 1797 and ds.num_classes == 10
    # standardized with the training split's own statistics
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4
    raw = load_dataset("digits", normalize=False)
    assert float(raw.x_train.min()) == 0.0 and float(raw.x_train.max()) == 1.0
    pixels = {tuple((16 * img.flatten()).round().int().tolist()) for img in raw.x_test}
    real = {tuple(img.astype(int).tolist()) for img in load_digits().data}
    assert pixels <= real  # every test image is one of the real digits


def test_stdlib_bytes_are_next_byte_windows_of_the_sorted_sources():
    ds = load_dataset("stdlib_bytes")
    x, y = ds.x_train, ds.y_train
    assert x.shape == y.shape == ((text_module.TRAIN_BYTES - 1) // 64, 64)
    assert ds.x_test.shape == ((text_module.TEST_BYTES - 1) // 64, 64)
    assert x.dtype == torch.int64 and ds.num_classes == 256
    assert torch.equal(y[:, :-1], x[:, 1:])  # the target is the next byte
    assert torch.equal(x[1:, 0], y[:-1, -1])  # consecutive windows continue the text
    files = text_module.stdlib_source_files()
    assert files == sorted(files) and all(f.suffix == ".py" for f in files)
    first = files[0].read_bytes()[:65]
    assert bytes(x[0].tolist()) + bytes([int(y[0, -1])]) == first
    with pytest.raises(ValueError, match="tokens"):
        load_dataset("stdlib_bytes", normalize=False)
    with pytest.raises(ValueError, match="tokens"):
        ds.with_inputs_scaled(2.0)


def test_byte_windows_drop_the_incomplete_tail():
    x, y = text_module.byte_windows(bytes(range(10)), 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


# --- variations of a dataset -----------------------------------------------------------------


def test_train_order_prefixes_are_stratified_nested_and_fixed():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    order = train_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(100))
    assert torch.equal(order, train_order(labels, seed=0))
    assert not torch.equal(order, train_order(labels, seed=1))
    for n in (10, 20, 50):
        counts = labels[order[:n]].bincount(minlength=3).float()
        assert (counts - n * torch.tensor([0.6, 0.3, 0.1])).abs().max() <= 1, (n, counts)
    windows = torch.zeros(7, 3, dtype=torch.long)  # targets that are not class labels
    assert sorted(train_order(windows, seed=0).tolist()) == list(range(7))


def test_train_size_keeps_a_stratified_subset_and_refuses_more_than_there_is():
    ds = load_dataset("mnist5k")
    small = ds.with_train_size(1000)
    assert small.x_train.shape[0] == 1000 and torch.equal(small.x_test, ds.x_test)
    assert torch.equal(small.y_train.bincount(), torch.full((10,), 100))
    smaller = ds.with_train_size(200)  # a prefix of the same order: a subset of the 1,000
    assert all(any(torch.equal(a, b) for b in small.x_train) for a in smaller.x_train[:5])
    assert torch.equal(ds.with_train_size(1000).x_train, small.x_train)
    with pytest.raises(ValueError, match="train_size 4001 exceeds the 4000 training examples"):
        ds.with_train_size(4001)


def test_sampler_with_replacement_draws_independent_uniform_batches():
    x, y = _toy(8)
    a = BatchSampler(x, y, 8, seed=1, replacement=True)
    b = BatchSampler(x, y, 8, seed=1, replacement=True)
    batches = [a.next()[1] for _ in range(50)]
    assert all(torch.equal(u, b.next()[1]) for u in batches)
    drawn = torch.stack(batches)
    assert any(len(set(batch.tolist())) < 8 for batch in drawn)  # repeats within a batch
    assert set(drawn.flatten().tolist()) == set(range(8))
    assert a.epoch == 49  # an "epoch" is as many examples as the data holds


def test_sampler_with_replacement_resumes_exactly_and_refuses_the_other_kind(tmp_path):
    x, y = _toy(50)
    sampler = BatchSampler(x, y, 8, seed=3, replacement=True)
    for _ in range(9):
        sampler.next()
    torch.save(sampler.state_dict(), tmp_path / "s.pt")
    expected = [sampler.next()[1] for _ in range(10)]
    restored = BatchSampler(x, y, 8, seed=999, replacement=True)
    restored.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert all(torch.equal(e, restored.next()[1]) for e in expected)
    with pytest.raises(ValueError, match="replacement"):
        BatchSampler(x, y, 8, seed=0).load_state_dict(sampler.state_dict())
    old = BatchSampler(x, y, 8, seed=0).state_dict()
    del old["replacement"]  # states saved before the option existed draw without replacement
    BatchSampler(x, y, 8, seed=0).load_state_dict(old)


def test_dataset_replacement_reaches_its_samplers():
    ds = load_dataset("mnist5k")
    assert not ds.replacement and not ds.sampler(16, 0).replacement
    drawn = ds.with_replacement(True).sampler(16, 0)
    assert drawn.replacement and ds.with_replacement(True).to("cpu").replacement
    plain = BatchSampler(ds.x_train, ds.y_train, 16, 0)
    assert torch.equal(ds.sampler(16, 0).next()[1], plain.next()[1])
