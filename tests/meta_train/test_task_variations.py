"""Task variations in meta-training and evaluation: the config's task section and family
members, the family's input/init-scale augmentations, suite cases; and that the one evaluation
path and meta-training's inner loop give seed s the same weights and minibatches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import l2o.optimizers as lo
from l2o.tasks import TaskVariation
from l2o.training import data_seed, make_optimizee, train_optimizee
from meta_train.configuration.checks import member_task, validate_names
from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import load_config
from meta_train.estimators import make_estimator, meta_step_gradient
from meta_train.evaluation.suites import Case, parse_suite, resolve_cases
from meta_train.inner_loop.families import AugmentationSpec, AugmentedSampler, draw_run
from meta_train.inner_loop.unroll import UnrollConfig, functional_optimizee, init_inner_state
from meta_train.training.parts import make_family, make_task, preflight, run_seeds

VARIED = [
    "task.input=raw",
    "task.init_scale=2",
    "task.batch_size=16",
    "task.train_size=600",
    "task.replacement=true",
    "task.width=12",
    "task.depth=2",
]
VARIATION = TaskVariation(
    input="raw", init_scale=2, batch_size=16, train_size=600, replacement=True, width=12, depth=2
)


def _seen_by_train_optimizee(task, data, seed: int, steps: int):
    """The initial weights and the minibatches of ``train_optimizee(seed=seed)`` (lr 0)."""
    seen = {"batches": []}

    def capture(step, model, optimizer, loss, x, y):
        seen.setdefault("weights", [p.detach().clone() for p in model.parameters()])
        seen["batches"].append((x.clone(), y.clone()))

    sgd0 = lambda params: torch.optim.SGD(params, lr=0.0)
    result = train_optimizee(task, sgd0, steps, seed, data=data, callback=capture)
    return seen["weights"], seen["batches"], result.train_losses


# ---------------------------------------------------------------------------------------------
# One pipeline in evaluation and meta-training


def test_the_config_task_section_makes_the_varied_task():
    task = make_task(load_config("tiny", VARIED))
    assert task.variation == VARIATION and task.batch_size == 16
    assert [tuple(p.shape) for p in task.make_model().parameters()][::2] == [
        (12, 784),
        (12, 12),
        (10, 12),
    ]


def test_seed_s_has_the_same_weights_and_minibatches_in_evaluation_and_meta_training():
    cfg = load_config("tiny", VARIED)
    task = make_task(cfg)
    data = task.load_data("cpu")  # what the trainer loads
    weights, batches, losses = _seen_by_train_optimizee(task, data, seed=7, steps=40)
    assert all(x.shape[0] == 16 for x, _ in batches) and float(batches[0][0].min()) >= 0
    rows = torch.cat([y for _, y in batches])
    assert rows.numel() > 600  # with replacement, beyond one pass over the 600 examples

    lopt = lo.create("mlp", hidden_sizes=(8,))
    inner = init_inner_state(task, lopt, [7], "cpu")
    flat = functional_optimizee(task, "cpu").spec.flatten(
        dict(make_optimizee(task, 7).named_parameters())
    )
    assert torch.equal(inner.params[0], flat)
    torch.testing.assert_close(flat, torch.cat([w.flatten() for w in weights]), rtol=0, atol=0)
    sampler = data.sampler(task.batch_size, data_seed(7))  # the trainer's samplers
    for x, y in batches:
        bx, by = sampler.next()
        assert torch.equal(bx, x) and torch.equal(by, y)

    cfg_unroll = UnrollConfig(length=1)
    fresh = [data.sampler(task.batch_size, data_seed(7))]
    result, _ = meta_step_gradient(
        lopt, task, inner, fresh, cfg_unroll, estimator=make_estimator(cfg_unroll)
    )
    torch.testing.assert_close(result.inner_losses[0, 0], losses[0], rtol=1e-5, atol=1e-6)


def test_a_family_member_with_a_fixed_variation_trains_on_its_own_pipeline():
    members = (
        "task.family.members=[{name: mnist_mlp_sigmoid}, "
        "{name: mnist_mlp_sigmoid, input: raw, init_scale: 2, batch_size: 16, replacement: true}]"
    )
    cfg = load_config("tiny", [members, "schedule.meta_batch=2", "meta_test.enabled=false"])
    validate_names(cfg)
    labels = [name for name, _ in cfg.task.family.spec().members]
    varied = "mnist_mlp_sigmoid,b16,input=raw,init_scale=2,replacement=true"
    assert labels == ["mnist_mlp_sigmoid", varied]
    target = make_task(cfg)
    runner = make_family(cfg, torch.device("cpu"), target, target.load_data("cpu"))
    lopt = lo.create("mlp", hidden_sizes=(8,))
    seeds = run_seeds(cfg, 0, 0)
    runner.restart(lopt, [True, True], seeds, [0, 0])
    member = {m.name: m for m in runner.members}[varied]
    assert member.task.variation == TaskVariation(
        input="raw", init_scale=2, batch_size=16, replacement=True
    )
    assert member.data.replacement and float(member.data.x_train.min()) == 0.0
    seed = member.inner.seeds[0]
    weights, batches, _ = _seen_by_train_optimizee(member.task, member.data, seed, steps=3)
    torch.testing.assert_close(
        member.inner.params[0], torch.cat([w.flatten() for w in weights]), rtol=0, atol=0
    )
    for x, y in batches:
        bx, by = member.samplers[0].next()
        assert torch.equal(bx, x) and torch.equal(by, y)
    plain = {m.name: m for m in runner.members}["mnist_mlp_sigmoid"]
    assert plain.task.variation == TaskVariation(batch_size=32)  # the tiny config's
    assert plain.data is not member.data and not plain.data.replacement


# ---------------------------------------------------------------------------------------------
# The config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.input=normalized", r"^task\.input must be one of \['standardized', 'raw'\]"),
        ("task.init_scale=0", r"^task\.init_scale must be a finite number > 0"),
        ("task.input_scale=-2", r"^task\.input_scale must be a finite number > 0"),
        ("task.train_size=0", r"^task\.train_size must be a positive integer"),
        ("task.replacement=maybe", r"task\.replacement"),
        ("task.depth=0", r"^task\.depth must be a positive integer"),
        (
            "task.family.members=[{name: mnist_mlp_sigmoid, init_scale: -1}]",
            r"^task\.family\.members\[0\]\.init_scale must be a finite number > 0",
        ),
        (
            "task.family.members=[{name: mnist_mlp_sigmoid, input: raw}, "
            "{name: mnist_mlp_sigmoid, input: raw}]",
            r"members\[1\]\.name: 'mnist_mlp_sigmoid,input=raw' is already members\[0\]",
        ),
        ("task.family.augment.init_scale=[2, 1]", r"task\.family\.augment\.init_scale"),
        ("task.family.augment.input_scale=[0, 1]", r"task\.family\.augment\.input_scale"),
    ],
)
def test_variation_keys_are_validated_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("tiny", [override, "schedule.meta_batch=2"])
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.name=mnist_conv", "task.width=8"], r"^task: width: task 'mnist_conv' has no"),
        (
            ["task.name=stdlib_lm_transformer", "task.dataset=null", "task.input=raw"],
            r"^task: input: task 'stdlib_lm_transformer' reads byte tokens",
        ),
        (
            [
                "task.family.members=[{name: digits_mlp_relu}, {name: stdlib_lm_transformer}]",
                "task.dataset=null",
                "task.family.augment.input_scale=[0.5, 2]",
                "schedule.meta_batch=2",
            ],
            r"augment\.input_scale applies to image inputs, but task\.family\.members\[1\]",
        ),
    ],
)
def test_variations_that_do_not_fit_the_task_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_names(load_config("tiny", overrides))


def test_more_training_examples_than_the_data_holds_is_refused_before_the_run():
    with pytest.raises(ConfigError, match=r"^task\.train_size 5000 exceeds the 4000 training"):
        preflight(load_config("tiny", ["task.train_size=5000", "meta_test.enabled=false"]))


def test_a_member_takes_the_task_sections_variation_but_for_its_own_keys():
    cfg = load_config(
        "tiny",
        [
            "task.input=raw",
            "task.init_scale=3",
            "task.family.members=[{name: mnist_mlp_relu}, {name: mnist_mlp_relu, init_scale: 0.5}]",
            "schedule.meta_batch=2",
        ],
    )
    first, second = (member_task(cfg, m) for m in cfg.task.family.members)
    assert first.variation == TaskVariation(input="raw", init_scale=3, batch_size=32)
    assert second.variation == TaskVariation(input="raw", init_scale=0.5, batch_size=32)


# ---------------------------------------------------------------------------------------------
# The family's input-scale and init-scale augmentations


def test_input_and_init_scales_are_drawn_log_uniformly_after_everything_else():
    spec = functional_optimizee(make_task(load_config("tiny")), "cpu").spec
    before = AugmentationSpec(param_scale=(0.5, 2.0), data_fraction=0.5)
    after = dataclasses.replace(before, input_scale=(0.1, 10.0), init_scale=(0.5, 4.0))
    old, new = (
        draw_run(before, spec, 32, 10, 4000, 0, 1, 2),
        draw_run(after, spec, 32, 10, 4000, 0, 1, 2),
    )
    assert torch.equal(old.scale, new.scale) and torch.equal(old.subset, new.subset)
    assert old.input_scale is None and old.init_scale is None
    assert 0.1 <= new.input_scale <= 10 and 0.5 <= new.init_scale <= 4
    again = draw_run(after, spec, 32, 10, 4000, 0, 1, 2)
    assert (again.input_scale, again.init_scale) == (new.input_scale, new.init_scale)
    scales = [draw_run(after, spec, 32, 10, 4000, 0, 1, run).input_scale for run in range(200)]
    logs = torch.tensor(scales).log10()
    assert logs.min() < -0.7 and logs.max() > 0.7 and abs(float(logs.mean())) < 0.2


def test_a_runs_input_scale_multiplies_its_inputs_and_its_init_scale_its_fresh_weights():
    cfg = load_config(
        "tiny",
        [
            "task.family.members=[{name: mnist_mlp_sigmoid}]",
            "task.family.augment={input_scale: [0.1, 10], init_scale: [0.5, 4]}",
            "meta_test.enabled=false",
        ],
    )
    task = make_task(cfg)
    data = task.load_data("cpu")
    runner = make_family(cfg, torch.device("cpu"), task, data)
    lopt = lo.create("mlp", hidden_sizes=(8,))
    runner.restart(lopt, [True], run_seeds(cfg, 0, 0), [0])
    (member,) = runner.members
    draw = draw_run(
        runner.spec.augment, member.inner.spec, 32, 10, 4000, cfg.seed, member.slots[0], 0
    )
    fresh = functional_optimizee(task, "cpu").init_params(list(member.inner.seeds))[0][0]
    torch.testing.assert_close(member.inner.params[0], draw.init_scale * fresh)
    x, y = member.samplers[0].next()
    plain = data.sampler(32, data_seed(member.inner.seeds[0]))
    px, py = plain.next()
    torch.testing.assert_close(x, draw.input_scale * px)
    assert torch.equal(y, py)
    tokens = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="input_scale applies to image inputs"):
        AugmentedSampler(tokens, tokens, draw, 2, 0)


# ---------------------------------------------------------------------------------------------
# Suite cases


def test_suite_cases_carry_variations_in_their_ids():
    suite = parse_suite(
        {
            "cases": [
                {
                    "task": "mnist_mlp_sigmoid",
                    "dataset": "mnist5k",
                    "steps": 1000,
                    "input": "raw",
                    "init_scale": 2,
                    "batch_size": 32,
                },
                {"task": "digits_mlp_tanh", "steps": 50, "input_scale": "1e-1", "train_size": 700},
                {"task": "stdlib_lm_transformer", "steps": 20, "replacement": True, "depth": 1},
                {"task": "mnist_mlp_relu", "dataset": "mnist5k", "steps": 5},
            ]
        }
    )
    cases = resolve_cases(suite, False, None, None, None)
    assert [c.id for c in cases] == [
        "mnist_mlp_sigmoid@mnist5k:1000,b32,input=raw,init_scale=2",
        "digits_mlp_tanh@digits:50,input_scale=0.1,train_size=700",
        "stdlib_lm_transformer@stdlib_bytes:20,replacement=true,depth=1",
        "mnist_mlp_relu@mnist5k:5",
    ]
    assert cases[0].batch_size == 32 and cases[3].batch_size is None
    assert Case(**dataclasses.asdict(cases[0])) == cases[0]  # read back from a saved mapping


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input": "pixels"}, r"cases\[0\]: input must be one of"),
        ({"init_scale": 0}, r"cases\[0\]: init_scale must be a finite number > 0"),
        ({"init_scale": "big"}, r"cases\[0\]: init_scale must be a number"),
        ({"train_size": -5}, r"cases\[0\]: train_size must be a positive integer"),
        ({"replacement": "often"}, r"cases\[0\]: replacement must be a bool"),
        ({"task": "mnist_conv", "depth": 3}, r"cases\[0\]: depth: task 'mnist_conv' has no"),
        ({"widht": 3}, r"cases\[0\]: unknown keys \['widht'\]"),
    ],
)
def test_a_bad_case_field_is_a_one_line_error_naming_it(fields, message):
    case = {"task": "mnist_mlp_sigmoid", "steps": 5, **fields}
    with pytest.raises(ValueError, match=message) as info:
        parse_suite({"cases": [case]}, "mine.yaml")
    assert len(str(info.value).splitlines()) == 1


def test_a_trained_case_runs_the_meta_training_pipeline_but_for_its_own_keys():
    suite = parse_suite(
        {
            "cases": [
                {"task": "trained", "horizon": 1},
                {"task": "trained", "horizon": 2, "input": "standardized", "batch_size": 8},
            ]
        }
    )
    trained = TaskVariation(input="raw", init_scale=2, batch_size=64)
    cases = resolve_cases(suite, False, "mnist_mlp_relu", "mnist5k", 10, trained)
    assert cases[0].variation == trained
    assert cases[1].variation == TaskVariation(init_scale=2, batch_size=8)
