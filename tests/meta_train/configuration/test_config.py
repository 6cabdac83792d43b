"""The typed config: YAML + overrides, coercion, and clear errors before any work starts."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from meta_train.configuration.checks import validate_names
from meta_train.configuration.engine import ConfigError, parse_override
from meta_train.configuration.schema import (
    MetaTrainConfig,
    all_keys,
    available_configs,
    config_from_dict,
    load_config,
    resolve_config_path,
)

SHIPPED = ["default", "paper", "relu_bn", "tiny"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_and_name_real_things(name):
    cfg = load_config(name)
    validate_names(cfg)
    assert cfg.schedule.horizon % cfg.unroll.length == 0


def test_shipped_configs_are_listed():
    assert set(SHIPPED) <= set(available_configs())


def test_paper_config_matches_the_paper():
    cfg = load_config("paper")
    s = cfg.schedule
    assert (s.epochs, s.runs_per_epoch, s.horizon) == (50, 20, 200)
    assert cfg.unroll.length == 20 and cfg.unroll.meta_loss == "log_sum"
    assert cfg.meta_optimizer.lr == 0.01
    assert cfg.optimizer.kwargs["hidden_size"] == 20 and cfg.optimizer.kwargs["num_layers"] == 2


def test_relu_bn_config_has_the_regularizer_one_override_away():
    cfg = load_config("relu_bn", ["regularization.kind=symmetry"])
    assert cfg.task.name == "mnist_mlp_relu_bn"
    assert cfg.optimizer.kwargs["output_scale"] == 0.1
    assert cfg.regularization.kind == "symmetry" and cfg.regularization.reg_mul == 0.001


def test_overrides_in_both_forms_and_coercion():
    cfg = load_config(
        "tiny",
        [
            "meta_optimizer.lr=1e-3",  # YAML reads this as a string: coerced to float
            "--schedule.epochs=3",  # the wandb-agent form
            "--unroll.length=2",
            "schedule.horizon=4",
            "meta_test.baselines=[sgd]",  # any registry baseline, as in evaluate.py
            "wandb.tags=a,b",
            "task.batch_size=null",
            "meta_optimizer.grad_clip_norm=null",
            "optimizer.kwargs.hidden_size=12",
            "logging.progress=False",
            "meta_optimizer.betas=[0.8, 0.99]",
        ],
    )
    assert cfg.meta_optimizer.lr == pytest.approx(1e-3)
    assert isinstance(cfg.meta_optimizer.lr, float)
    assert cfg.schedule.epochs == 3 and cfg.unroll.length == 2 and cfg.schedule.horizon == 4
    assert cfg.meta_test.baselines == ["sgd"]
    assert cfg.wandb.tags == ["a", "b"]
    assert cfg.task.batch_size is None and cfg.meta_optimizer.grad_clip_norm is None
    assert cfg.optimizer.kwargs["hidden_size"] == 12
    assert cfg.optimizer.kwargs["output_scale"] == 0.1  # the rest of kwargs is kept
    assert cfg.logging.progress is False
    assert cfg.meta_optimizer.betas == (0.8, 0.99)


def test_dict_round_trip_is_exact():
    cfg = load_config("default")
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()


def test_unknown_key_lists_near_matches():
    with pytest.raises(ConfigError, match=r"meta_optimizer\.lr"):
        load_config("tiny", ["meta_optimizer.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"schedule\.horizon"):
        load_config("tiny", ["schedule.horizn=10"])
    # a leaf put in the wrong section is found in the right one
    with pytest.raises(ConfigError, match=r"unknown config key 'schedule\.lr'.*meta_optimizer\.lr"):
        load_config("tiny", ["schedule.lr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'unrol'.*unroll"):
        config_from_dict({"unrol": {"length": 3}})


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("meta_optimizer.lr=-0.1", r"meta_optimizer\.lr must be positive"),
        ("meta_optimizer.lr=abc", r"meta_optimizer\.lr must be a number"),
        ("unroll.length=0", r"unroll\.length must be positive"),
        ("meta_optimizer.betas=[0.9, 1.0]", r"meta_optimizer\.betas\[1\] must be in \[0, 1\)"),
        ("unroll.length=12", r"unroll\.length \(12\) must not exceed schedule\.horizon \(6\)"),
        ("unroll.length=4", r"schedule\.horizon \(6\) must be a multiple of unroll\.length"),
        ("schedule.epochs=1.5", r"schedule\.epochs must be an integer"),
        ("schedule.meta_batch=true", r"schedule\.meta_batch must be an integer"),
        ("logging.progress=maybe", r"logging\.progress must be a bool"),
        (
            "unroll.estimator=third",
            r"unroll\.estimator must be one of \['es', 'first', 'pes', 'second'\]",
        ),
        (
            "unroll.order=third",
            r"unroll\.estimator must be one of \['es', 'first', 'pes', 'second'\]",
        ),
        ("unroll.meta_loss=median", r"unroll\.meta_loss must be one of"),
        ("wandb.mode=loud", r"wandb\.mode must be one of"),
        ("regularization.kind=symmetry", r"regularization\.reg_mul is 0"),
        ("reliability.max_consecutive_nonfinite=0", r"max_consecutive_nonfinite must be positive"),
        ("validation.first_seed=1000", r"overlap the final evaluation's evaluation seeds"),
        ("validation.first_seed=3", r"overlap the final evaluation's tuning seeds"),
        ("meta_test.suites=[]", r"meta_test\.suites must not be empty"),
        ("meta_test.suites=[indist, indist]", r"meta_test\.suites has duplicates"),
        ("meta_test.seeds=0", r"meta_test\.seeds must be positive"),
        ("meta_test.lr_grid=[0.1]", r"meta_test\.lr_grid was retired: .*evaluate\.py"),
        ("meta_test.report_steps=[6]", r"meta_test\.report_steps was retired"),
        ("device=gpu", r"device must be"),
        ("schedule=3", r"schedule must be a mapping"),
        ("schedule.epochs.x=3", r"schedule\.epochs is a value"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("tiny", [override])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("--schedule.epochs")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("task.name=mnist_mlp_sigmod", r"unknown task 'mnist_mlp_sigmod'.*mnist_mlp_sigmoid"),
        ("task.dataset=mnist6k", r"task\.dataset: unknown dataset 'mnist6k'"),
        ("task.dataset=cifar10", r"task: .*expects"),
        ("optimizer.name=lstn", r"unknown learned optimizer 'lstn'.*lstm"),
        ("optimizer.kwargs.hiden_size=3", r"optimizer\.kwargs\.hiden_size.*hidden_size"),
        ("optimizer.kwargs.hidden_size=big", r"optimizer\.kwargs\.hidden_size must be an integer"),
        ("meta_test.baselines=[sgd, adamm]", r"unknown baseline 'adamm'.*adam"),
        ("meta_test.suites=[indst]", r"unknown suite 'indst'"),
    ],
)
def test_unknown_names_fail_before_work(override, fragment):
    cfg = load_config("tiny", [override])
    with pytest.raises(ConfigError, match=fragment):
        validate_names(cfg)


def test_config_names_and_paths(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("schedule: {epochs: 7}\n")
    assert load_config(str(path)).schedule.epochs == 7
    assert resolve_config_path("tiny").name == "tiny.yaml"
    with pytest.raises(ConfigError, match=r"unknown config 'tinny'.*tiny"):
        resolve_config_path("tinny")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config_path(str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_every_schema_key_is_settable():
    defaults = MetaTrainConfig().to_dict()
    for key in all_keys():
        node = defaults
        for part in key.split("."):
            node = node[part]
        override = f"{key}={yaml.safe_dump(node, default_flow_style=True).strip()}"
        if override.endswith("..."):
            override = override[: -len("...")].strip()
        config_from_dict({}, [override])


def test_regularization_section_builds_the_regularizer():
    from l2o.regularization import NormRegularizer, SymmetryRegularizer
    from meta_train.training.parts import make_regularizer, make_task

    cfg = load_config("relu_bn", ["regularization.kind=symmetry", "regularization.weights.scale=0"])
    reg = make_regularizer(cfg, make_task(cfg), torch.device("cpu"))
    assert isinstance(reg, SymmetryRegularizer) and reg.reg_mul == 0.001
    assert set(reg.weights) == {"rescale", "translation"}  # scale switched off by its weight
    cfg = load_config("relu_bn", ["regularization.kind=norm", "regularization.reg_mul=0.5"])
    assert isinstance(make_regularizer(cfg, make_task(cfg), torch.device("cpu")), NormRegularizer)
    cfg = load_config("relu_bn")
    assert make_regularizer(cfg, make_task(cfg), torch.device("cpu")) is None


def test_the_unroll_section_is_the_unrolls_config():
    """One dataclass: the YAML section builds the ``UnrollConfig`` the estimators run with; the
    old key ``unroll.order`` still works as ``unroll.estimator``, but not both at once."""
    from meta_train.inner_loop.unroll import UnrollConfig

    cfg = load_config("tiny", ["unroll.order=second"])
    assert isinstance(cfg.unroll, UnrollConfig) and cfg.unroll.estimator == "second"
    with pytest.raises(ConfigError, match=r"unroll\.order is the old name of unroll\.estimator"):
        config_from_dict({"unroll": {"order": "first", "estimator": "first"}})


def test_a_checkpoint_config_with_retired_meta_test_keys_still_loads(tmp_path):
    """Runs saved before the fair evaluation resume: their retired keys are dropped."""
    from meta_train.configuration.schema import config_from_dict

    saved = load_config("tiny").to_dict()
    saved["meta_test"].update(steps=5, lr_grid=[0.01, 0.1], grid_seeds=1, report_steps=[1])
    with pytest.raises(ConfigError, match="retired"):
        config_from_dict(saved)
    cfg = config_from_dict(saved, saved=True)
    assert cfg.meta_test.suites == ["indist"]
    assert "lr_grid" in saved["meta_test"]  # the caller's mapping is never edited


def test_shipped_general_was_made_by_its_recipe():
    """``l2o/optimizers/pretrained/general.pt`` records the resolved config of the run that made
    it: it must be ``configs/meta_train/general.yaml`` as committed (only the run's name and
    folder differ), so the README's one command reproduces the shipped checkpoint. Keys added to
    the schema since it was recorded read as their defaults, which are what the run had."""
    from l2o.optimizers.checkpoint_io import load_learned_optimizer
    from l2o.optimizers.wrapper import PRETRAINED_DIR

    _, metadata = load_learned_optimizer(PRETRAINED_DIR / "general.pt")
    recorded = config_from_dict(dict(metadata["config"]), saved=True).to_dict()
    recipe = load_config("general").to_dict()
    for key in ("name", "run_dir"):
        recorded.pop(key), recipe.pop(key)
    # The default contenders grew (muon_cosine, sf_adamw) after it was made; the recipe's
    # meta-test is disabled, so that list never ran
    assert recipe["meta_test"]["enabled"] is False
    recorded["meta_test"].pop("baselines"), recipe["meta_test"].pop("baselines")
    assert recorded == recipe


RUN_TIME_FAILURES = [  # each passed every check before and failed at the first meta-step
    (
        ["unroll.estimator=pes", "regularization.kind=symmetry", "regularization.reg_mul=0.1"],
        r"regularization\.kind 'symmetry': unroll\.estimator 'pes' does not support",
    ),
    (
        ["unroll.estimator=es", "regularization.kind=norm", "regularization.reg_mul=0.1"],
        r"unroll\.estimator 'es' does not support regularization",
    ),
    (["unroll.estimator=es", "unroll.estimator_kwargs={sigma: -1}"], r"sigma must be positive"),
    (["unroll.estimator=pes", "unroll.estimator_kwargs={bogus: 1}"], r"'bogus'.*'pes' takes"),
    (["unroll.estimator_kwargs={bogus: 1}"], r"estimator 'first' takes no settings"),
]


@pytest.mark.parametrize(("overrides", "fragment"), RUN_TIME_FAILURES)
def test_configs_that_failed_at_run_time_are_refused_by_validation(
    overrides, fragment, tmp_path, capsys
):
    """Refused by the config itself, so by ``run.py --print-config`` (nothing created) and by
    ``sweep.py --check`` (the same validation)."""
    from meta_train import run, sweep
    from meta_train.sweeps.spec import PROGRAM

    with pytest.raises(ConfigError, match=fragment):
        load_config("tiny", overrides)
    run_dir = tmp_path / "run"
    args = ["--config", "tiny", "--run-dir", str(run_dir), *overrides]
    assert run.main(["--print-config", *args]) == 2
    assert run.main(args) == 2 and not run_dir.exists()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error:") for line in lines)  # one per call
    key, value = overrides[0].split("=", 1)
    spec = {
        "program": PROGRAM,
        "method": "grid",
        "parameters": {key: {"values": [yaml.safe_load(value)]}},
        "command": ["${program}", "--config", "tiny", *overrides[1:], "${args}"],
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert sweep.main([str(tmp_path / "sweep.yaml"), "--check"]) == 2
    assert re.search(fragment, capsys.readouterr().err)


def test_under_torchrun_a_meta_batch_the_ranks_cannot_share_is_refused_first(
    tmp_path, monkeypatch, capsys
):
    """The ranks each run an equal slice of the meta-batch (a family's slots too): checked with
    the config, before the run folder exists, not when the trainer slices it."""
    from meta_train import run

    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    message = r"schedule\.meta_batch=3 must be divisible by the number of processes \(2\)"
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", ["schedule.meta_batch=3"])
    family = [
        "task.family.members=[{name: mnist_mlp_relu}, {name: mnist_mlp_sigmoid}]",
        "schedule.meta_batch=3",
    ]
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", family)
    run_dir = tmp_path / "run"
    assert run.main(["--config", "tiny", "--run-dir", str(run_dir), *family]) == 2
    assert not run_dir.exists() and "divisible" in capsys.readouterr().err
    assert load_config("tiny", ["schedule.meta_batch=4"]).schedule.meta_batch == 4
