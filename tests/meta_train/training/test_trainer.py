"""The trainer's held-out validation: what it scores, by the criterion the config names."""

from __future__ import annotations

import pytest

import l2o.optimizers as lo
from l2o.training import train_optimizee
from meta_train.configuration.engine import ConfigError
from meta_train.configuration.schema import load_config
from meta_train.evaluation.criteria import final_window
from meta_train.training.trainer import Trainer


def _expected(trainer: Trainer, reduce) -> float:
    v = trainer.cfg.validation
    values = []
    for i in range(v.seeds):
        result = train_optimizee(
            trainer.task,
            lambda params: lo.LearnedOptimizer(params, trainer.lopt),
            v.steps,
            seed=v.first_seed + i,
            data=trainer.data,
            evaluate_test=False,
        )
        values.append(reduce(result.train_losses))
    return sum(values) / len(values)


@pytest.mark.parametrize("criterion", ["mean", "final"])
def test_validation_scores_the_configured_criterion(tmp_path, criterion):
    cfg = load_config(
        "tiny", ["validation.steps=20", "validation.seeds=2", f"validation.criterion={criterion}"]
    )
    trainer = Trainer(cfg, tmp_path)
    try:
        got = trainer.validate()
        if criterion == "mean":
            want = _expected(trainer, lambda losses: float(losses.mean()))
        else:
            window = final_window(20)
            assert window == 2
            want = _expected(trainer, lambda losses: float(losses[-window:].double().mean()))
        assert got == pytest.approx(want, rel=1e-6)
    finally:
        trainer.close()


def test_an_unknown_validation_criterion_is_refused():
    with pytest.raises(ConfigError, match=r"validation\.criterion"):
        load_config("tiny", ["validation.criterion=best"])
