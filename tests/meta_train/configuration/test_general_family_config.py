"""The `general_family` recipe (issue 25): it loads, names real tasks, and spans the axes it
claims (docs/general-experiments-2026-12-07.md)."""

from __future__ import annotations

from meta_train.configuration.checks import validate_names
from meta_train.configuration.schema import load_config


def test_general_family_recipe_loads_and_spans_its_axes():
    cfg = load_config("general_family")
    validate_names(cfg)
    members = cfg.task.family.members
    assert {m["name"] for m in members} >= {"mnist_mlp_relu_bn", "mnist_conv"}
    assert cfg.schedule.meta_batch >= len(members)
    horizon = cfg.horizon_schedule
    assert (horizon.min, horizon.max) == (100, 2000)
    augment = cfg.task.family.augment
    assert tuple(augment.input_scale) == (0.25, 4.0) and tuple(augment.init_scale) == (0.5, 2.0)
    assert cfg.optimizer.name == "general" and cfg.unroll.estimator == "pes"
    assert cfg.threads == 1


def test_the_one_task_ablation_is_the_shipped_recipe_without_the_family():
    """`general_one_task` (the held-out ablation's "without the family" row) differs from
    `general-v2` (the recipe that ablation was of, then shipped as `general`) in its name and
    task section only: one task, no members, no augmentations."""
    from dataclasses import asdict, replace

    shipped, one_task = load_config("general-v2"), load_config("general_one_task")
    validate_names(one_task)
    assert not one_task.task.family.enabled and shipped.task.family.enabled
    assert one_task.task.name == shipped.task.name == "mnist_mlp_sigmoid"
    assert one_task.schedule.meta_batch == shipped.schedule.meta_batch
    same = replace(one_task, name=shipped.name, task=shipped.task)
    assert asdict(same) == asdict(shipped)
