"""Task variations: one validated object that changes a task's pipeline, and what it does."""

import pytest
import torch

from l2o.data import load_dataset
from l2o.tasks import TaskVariation, get_task
from l2o.tasks.variation import VARIATION_KEYS
from l2o.training import make_optimizee, train_optimizee


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(input="normalized"), r"input must be one of \['standardized', 'raw'\]"),
        (dict(input_scale=0), "input_scale must be a finite number > 0"),
        (dict(input_scale=float("nan")), "input_scale must be a finite number > 0"),
        (dict(init_scale=-1.0), "init_scale must be a finite number > 0"),
        (dict(init_scale=True), "init_scale must be a finite number > 0"),
        (dict(init_scale="2"), "init_scale must be a finite number > 0"),
        (dict(train_size=0), "train_size must be a positive integer"),
        (dict(train_size=10.5), "train_size must be a positive integer"),
        (dict(batch_size=-3), "batch_size must be a positive integer"),
        (dict(replacement="yes"), "replacement must be true or false"),
        (dict(width=0), "width must be a positive integer"),
        (dict(depth=True), "depth must be a positive integer"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match) as info:
        TaskVariation(**fields)
    assert len(str(info.value).splitlines()) == 1


def test_defaults_are_the_registered_pipeline_and_ids_name_the_changes():
    assert TaskVariation().changes() == {} and TaskVariation().id == ""
    assert TaskVariation(init_scale=1, input_scale=1.0) == TaskVariation()
    v = TaskVariation(input="raw", init_scale=2, batch_size=32, replacement=True, width=64)
    assert v.id == ",b32,input=raw,init_scale=2,replacement=true,width=64"
    assert (
        TaskVariation(input_scale=0.25, train_size=1000).id == ",input_scale=0.25,train_size=1000"
    )
    assert TaskVariation.from_mapping({"task": "x", "steps": 5, "depth": 3}) == TaskVariation(
        depth=3
    )
    assert set(VARIATION_KEYS) == {
        "input",
        "input_scale",
        "init_scale",
        "train_size",
        "batch_size",
        "replacement",
        "width",
        "depth",
    }


def test_the_issues_example_case():
    """{task: mnist_mlp_sigmoid, dataset: mnist5k, input: raw, init_scale: 2, batch_size: 32}"""
    variation = TaskVariation(input="raw", init_scale=2, batch_size=32)
    task = get_task("mnist_mlp_sigmoid", dataset="mnist5k", variation=variation)
    plain = get_task("mnist_mlp_sigmoid", dataset="mnist5k")
    assert task.batch_size == 32 and task.variation == variation
    for (name, a), (_, b) in zip(
        make_optimizee(task, 3).named_parameters(), make_optimizee(plain, 3).named_parameters()
    ):
        torch.testing.assert_close(a, 2 * b, rtol=0, atol=0, msg=name)
    data = task.load_data()
    assert torch.equal(data.x_train, load_dataset("mnist5k", normalize=False).x_train)
    seen = []
    result = train_optimizee(
        task,
        lambda p: torch.optim.Adam(p, lr=1e-2),
        steps=20,
        seed=0,
        data=data,
        callback=lambda step, model, opt, loss, x, y: seen.append(x.shape[0]),
    )
    assert seen == [32] * 20 and not result.diverged and 0 <= result.test_acc <= 1


def test_input_scale_multiplies_the_preprocessed_inputs():
    standardized = get_task("digits_mlp_relu").load_data()
    scaled = get_task("digits_mlp_relu", variation=TaskVariation(input_scale=4.0)).load_data()
    torch.testing.assert_close(scaled.x_train, 4 * standardized.x_train)
    torch.testing.assert_close(scaled.x_test, 4 * standardized.x_test)
    raw = TaskVariation(input="raw", input_scale=255)
    pixels = get_task("mnist_mlp_sigmoid", dataset="mnist5k", variation=raw).load_data()
    assert float(pixels.x_train.max()) == 255.0 and float(pixels.x_train.min()) == 0.0


def test_train_size_and_replacement_reach_the_data():
    variation = TaskVariation(train_size=500, replacement=True)
    data = get_task("mnist_mlp_sigmoid", dataset="mnist5k", variation=variation).load_data()
    assert data.x_train.shape[0] == 500 and data.x_test.shape[0] == 1000
    assert data.replacement and data.sampler(64, 0).replacement
    too_many = get_task("digits_mlp_tanh", variation=TaskVariation(train_size=2000))
    with pytest.raises(ValueError, match="train_size 2000 exceeds the 1400 training examples"):
        too_many.load_data()


def test_width_and_depth_resize_the_mlp_and_the_transformer():
    shapes = lambda task: [
        tuple(p.shape) for n, p in task.make_model().named_parameters() if n.endswith("weight")
    ]
    wide = get_task("mnist_mlp_relu", variation=TaskVariation(width=64, depth=3))
    assert shapes(wide) == [(64, 784), (64, 64), (64, 64), (10, 64)]
    deeper = get_task("mnist_mlp_sigmoid_2layer", variation=TaskVariation(depth=4))
    assert shapes(deeper) == [(20, 784), (20, 20), (20, 20), (20, 20), (10, 20)]
    bn = get_task("mnist_mlp_relu_bn", variation=TaskVariation(width=8)).make_model()
    assert bn.bn1.weight.shape == (8,)
    lm = get_task("stdlib_lm_transformer", variation=TaskVariation(width=32, depth=1))
    model = lm.make_model()
    assert len(model.blocks) == 1 and model.embed.weight.shape == (256, 32)
    with pytest.raises(ValueError, match="multiple of the 4 attention heads"):
        get_task("stdlib_lm_transformer", variation=TaskVariation(width=30))
    with pytest.raises(ValueError, match=r"depth: .*hidden widths \(1024, 256\) differ"):
        get_task("mnist_mlp_wide", variation=TaskVariation(depth=3))


@pytest.mark.parametrize("key", ["width", "depth"])
def test_width_or_depth_of_a_convnet_is_a_one_line_error(key):
    with pytest.raises(ValueError, match=rf"^{key}: task 'mnist_conv' has no hidden width") as info:
        get_task("mnist_conv", variation=TaskVariation(**{key: 8}))
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("fields", "key"), [({"input": "raw"}, "input"), ({"input_scale": 2}, "input_scale")]
)
def test_input_preprocessing_of_a_token_task_is_a_one_line_error(fields, key):
    with pytest.raises(ValueError, match=rf"^{key}: task 'stdlib_lm_transformer' reads byte"):
        get_task("stdlib_lm_transformer", variation=TaskVariation(**fields))


def test_batch_size_argument_and_variation_compose():
    task = get_task("mnist_mlp_sigmoid", batch_size=64)
    assert task.batch_size == 64 and task.variation == TaskVariation(batch_size=64)
    task = get_task("mnist_mlp_sigmoid", batch_size=16, variation=TaskVariation(batch_size=32))
    assert task.batch_size == 16  # the argument wins
    kept = task.with_options(variation=TaskVariation(init_scale=3))  # keeps the batch size
    assert kept.batch_size == 16 and kept.variation == TaskVariation(batch_size=16, init_scale=3)
    assert get_task("mnist_mlp_sigmoid") is get_task("mnist_mlp_sigmoid", variation=TaskVariation())
    with pytest.raises(TypeError, match="TaskVariation"):
        get_task("mnist_mlp_sigmoid", variation={"input": "raw"})
