import math

import pytest
import torch
from torch import nn

from l2o.data import DATASET_SHAPES, Dataset, DatasetNotFoundError, load_dataset
from l2o.tasks import MixedActivation, Task, available_tasks, get_task, register_task
from l2o.training import train_optimizee

PAPER_TASKS = {
    "mnist_mlp_sigmoid",
    "mnist_mlp_relu",
    "mnist_mlp_leakyrelu",
    "mnist_mlp_softplus",
    "mnist_mlp_sigmoid_h40",
    "mnist_mlp_relu_2layer",
    "mnist_mlp_relu_bn",
    "mnist_mlp_mixed",
    "mnist_conv",
    "cifar10_mlp_sigmoid",
    "fashion_mnist_mlp_sigmoid",
    "fashion_mnist_mlp_relu_bn",
}


NEW_TASKS = {"mnist_mlp_wide", "digits_mlp_relu", "digits_mlp_tanh", "stdlib_lm_transformer"}
IMAGE_TASKS = [name for name in available_tasks() if not get_task(name).reads_tokens]


def synthetic_dataset(name: str, n_train: int = 1024, n_test: int = 256, seed: int = 0) -> Dataset:
    """Learnable class-conditional Gaussian images of a dataset's shape (for CIFAR-10, which
    cannot be downloaded here)."""
    (c, h, w), k = DATASET_SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, c, h, w, generator=g)

    def draw(n):
        y = torch.randint(0, k, (n,), generator=g)
        return centers[y] + 2.0 * torch.randn(n, c, h, w, generator=g), y

    (x_tr, y_tr), (x_te, y_te) = draw(n_train), draw(n_test)
    return Dataset(name, x_tr, y_tr, x_te, y_te, k)


def task_data(task: Task) -> Dataset:
    """Real data where it is on this machine, else data of the same shape."""
    try:
        if task.dataset_name == "mnist":
            return load_dataset("mnist5k")
        return task.load_data()
    except DatasetNotFoundError:
        return synthetic_dataset(task.dataset_name)


def test_registry_has_the_papers_optimizees_and_the_new_tasks():
    assert set(available_tasks()) >= PAPER_TASKS | NEW_TASKS


def test_unknown_task_lists_near_matches_and_all_names():
    with pytest.raises(ValueError) as info:
        get_task("mnist_mlp_sigmiod")
    assert "'mnist_mlp_sigmoid'" in str(info.value) and "mnist_conv" in str(info.value)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("mnist_mlp_sigmoid"))


def example_inputs(task: Task, n: int) -> torch.Tensor:
    if task.reads_tokens:
        return torch.randint(0, task.num_classes, (n, *task.input_shape))
    return torch.randn(n, *task.input_shape)


@pytest.mark.parametrize("name", available_tasks())
def test_model_outputs_logits_and_is_seeded(name):
    task = get_task(name)
    before = torch.get_rng_state()
    model_a, model_b, model_c = task.make_model(0), task.make_model(0), task.make_model(1)
    assert torch.equal(before, torch.get_rng_state()), "make_model must not touch the global RNG"
    for (name_a, a), (_, b), (_, _c) in zip(
        model_a.named_parameters(), model_b.named_parameters(), model_c.named_parameters()
    ):
        assert torch.equal(a, b), name_a
    assert not all(torch.equal(a, c) for a, c in zip(model_a.parameters(), model_c.parameters()))
    x = example_inputs(task, 5)
    if task.reads_tokens:  # next-token logits at every position
        assert model_a(x).shape == (5, *task.input_shape, task.num_classes)
        return
    assert model_a(x).shape == (5, task.num_classes)
    names = [n for n, _ in model_a.named_parameters()]
    assert names[0] in ("fc1.weight", "conv1.weight")
    assert all(n.split(".")[0][:-1] in ("fc", "bn", "conv") for n in names), names


@pytest.mark.parametrize("name", IMAGE_TASKS)
def test_every_image_task_trains_with_adam_and_its_loss_falls(name):
    task = get_task(name)
    data = task_data(task)
    result = train_optimizee(
        task, lambda p: torch.optim.Adam(p, lr=1e-2), steps=100, seed=0, data=data
    )
    losses = result.train_losses
    assert not result.diverged and torch.isfinite(losses).all()
    assert losses[-10:].mean() < 0.6 * losses[:10].mean(), losses[[0, 50, 99]]
    assert 0.0 <= result.test_acc <= 1.0 and result.test_acc > 0.3


def test_classic_task_architecture():
    model = get_task("mnist_mlp_sigmoid").make_model()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "fc1.weight": (20, 784),
        "fc1.bias": (20,),
        "fc2.weight": (10, 20),
        "fc2.bias": (10,),
    }
    assert isinstance(model.act1, nn.Sigmoid)


def test_batchnorm_task_is_affine_with_no_running_stats():
    model = get_task("mnist_mlp_relu_bn").make_model()
    assert isinstance(model.bn1, nn.BatchNorm1d) and model.bn1.affine
    assert not model.bn1.track_running_stats and dict(model.named_buffers()) == {}
    x = torch.randn(64, 1, 28, 28)
    hidden = model.bn1(model.fc1(x.flatten(1)))
    assert torch.allclose(hidden.mean(0), model.bn1.bias, atol=1e-5)


def test_cifar_task_shape():
    task = get_task("cifar10_mlp_sigmoid")
    widths = [p.shape for n, p in task.make_model().named_parameters() if n.endswith("weight")]
    assert widths == [(40, 3072), (40, 40), (10, 40)]


def test_mixed_activation_splits_units():
    act = MixedActivation(8, ["relu", "identity"])
    x = -torch.ones(2, 8)
    out = act(x)
    assert torch.equal(out[:, :4], torch.zeros(2, 4)) and torch.equal(out[:, 4:], x[:, 4:])
    with pytest.raises(ValueError):
        MixedActivation(2, ["relu", "tanh", "sigmoid"])


def test_dataset_override_checks_shapes():
    task = get_task("mnist_mlp_sigmoid", dataset="fashion_mnist", batch_size=64)
    assert task.dataset_name == "fashion_mnist" and task.batch_size == 64
    with pytest.raises(ValueError, match="expects mnist-shaped inputs"):
        get_task("mnist_mlp_sigmoid", dataset="cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_task("mnist_mlp_sigmoid", dataset="imagenet")
    with pytest.raises(ValueError, match="batch_size"):
        get_task("mnist_mlp_sigmoid", batch_size=0)


def test_wide_mlp_has_over_a_million_parameters():
    model = get_task("mnist_mlp_wide").make_model()
    widths = [tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")]
    assert widths == [(1024, 784), (256, 1024), (10, 256)]
    assert sum(p.numel() for p in model.parameters()) == 1_068_810


def test_digits_tasks_read_eight_by_eight_digits():
    for name in ("digits_mlp_relu", "digits_mlp_tanh"):
        task = get_task(name)
        assert task.input_shape == (1, 8, 8) and task.num_classes == 10
        assert task.make_model().fc1.weight.shape == (32, 64)


def test_language_model_architecture():
    task = get_task("stdlib_lm_transformer")
    model = task.make_model()
    assert task.input_shape == (64,) and task.num_classes == 256 and task.batch_size == 32
    assert len(model.blocks) == 2 and model.blocks[0].attn.heads == 4
    assert model.embed.weight.shape == (256, 64) and model.pos_embed.shape == (64, 64)
    assert isinstance(model.blocks[0].ln1, nn.LayerNorm) and dict(model.named_buffers()) == {}


def test_language_model_is_causal():
    """A token changes the logits at its own position and after it, never before."""
    model = get_task("stdlib_lm_transformer").make_model()
    tokens = torch.randint(0, 256, (2, 64))
    changed = tokens.clone()
    changed[:, 40] = (changed[:, 40] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :40], b[:, :40])
    assert not torch.allclose(a[:, 40:], b[:, 40:])
    assert model(tokens[:, :10]).shape == (2, 10, 256)
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_loss_and_metric_average_over_every_predicted_position():
    logits = torch.randn(3, 5, 7)
    targets = torch.randint(0, 7, (3, 5))
    task = get_task("stdlib_lm_transformer")
    flat = torch.nn.functional.cross_entropy(logits.reshape(15, 7), targets.reshape(15))
    torch.testing.assert_close(task.loss(logits, targets), flat)
    assert int(task.correct(logits, targets)) == int((logits.argmax(-1) == targets).sum())


def test_language_model_trains_with_adam_and_its_loss_falls():
    """A few Adam steps through the one evaluation path: the next-byte loss falls from about
    ln 256 and the test metric (next-byte accuracy) beats chance."""
    task = get_task("stdlib_lm_transformer")
    result = train_optimizee(task, lambda p: torch.optim.Adam(p, lr=3e-3), steps=30, seed=0)
    losses = result.train_losses
    assert not result.diverged and torch.isfinite(losses).all()
    assert abs(float(losses[0]) - math.log(256)) < 0.6
    assert losses[-5:].mean() < 0.6 * losses[0], losses[[0, 15, 29]]
    assert 0.1 < result.test_acc <= 1.0 and result.test_loss < 0.6 * float(losses[0])
