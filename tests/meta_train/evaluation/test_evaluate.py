"""The fair evaluation: tuning for the reported criterion, a grid that widens itself, held-out
seeds, divergence counted, suites checked against the registry, a stable JSON schema."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import l2o.optimizers as lo
from l2o.data import DatasetNotFoundError
from l2o.tasks import Task
from l2o.training import train_optimizee
from meta_train import evaluate as cli
from meta_train.evaluation import runner
from meta_train.evaluation.contenders import (
    DEFAULT_BASELINES,
    Learned,
    baseline_factory,
    check_baselines,
)
from meta_train.evaluation.criteria import final_window, score
from meta_train.evaluation.report import format_table, to_json, write_outputs
from meta_train.evaluation.rows import ROW_FIELDS, SUMMARY_FIELDS, rows, summary
from meta_train.evaluation.runner import disjoint_seeds, run_suite, train_runs
from meta_train.evaluation.stats import geometric_mean, ratio_ci
from meta_train.evaluation.suites import available_suites, load_suite, parse_suite
from meta_train.evaluation.tuning import LogGrid, tune

STEPS = 100


def synthetic(best_mean: float, best_final: float):
    """Loss curves with a known answer: the first 90% of steps are lowest at ``best_mean``, the
    last 10% at ``best_final``; lr above 5 diverges (NaN from step 3 on)."""

    def run(lr: float, seed: int) -> torch.Tensor:
        x = math.log10(lr)
        early = (x - math.log10(best_mean)) ** 2 + 1.0
        late = 0.01 * (x - math.log10(best_final)) ** 2 + 0.5
        curve = torch.full((STEPS,), early)
        curve[-final_window(STEPS) :] = late
        if lr > 5:
            curve[3:] = math.nan
        return curve + 1e-3 * seed

    return run


def test_tuning_picks_each_criterions_argmin():
    tunings = tune(synthetic(1e-2, 1e-1), ["final", "mean", "paper50"], seeds=[0, 1])
    assert tunings["final"].lr == pytest.approx(0.1)
    assert tunings["mean"].lr == pytest.approx(0.01)
    assert tunings["paper50"].lr == pytest.approx(0.01)
    assert not any(t.notes for t in tunings.values())
    # divergence scores +inf and is counted on the grid, not raised
    top = tunings["final"].grid[-1]
    assert top.lr == 10.0 and top.diverged_runs == 2 and top.score_mean == math.inf


def test_an_edge_optimum_widens_the_grid_and_says_so():
    tunings = tune(synthetic(3e-6, 3e-6), ["final"], seeds=[0], grid=LogGrid(1e-4, 1.0))
    t = tunings["final"]
    assert t.lr == pytest.approx(3.16228e-6, rel=1e-4)
    assert t.grid[0].lr < t.lr  # no longer at the edge
    assert len(t.notes) == 2 and all("lower edge" in n and "widened" in n for n in t.notes)
    capped = tune(synthetic(1e-9, 1e-9), ["final"], [0], LogGrid(1e-4, 1.0, max_widenings=1))
    assert capped["final"].at_edge and "still at the lower edge" in capped["final"].notes[-1]


def test_an_extra_point_joins_the_grid_inside_its_edges_only():
    """The nominal term's own step size is tried beside the grid, so a tuned nominal term is
    never worse than the untrained one on the tuning seeds; a point outside the grid does not
    move its edges."""
    tunings = tune(synthetic(0.04, 0.04), ["final"], seeds=[0], extra=(0.04, 50.0))
    lrs = [p.lr for p in tunings["final"].grid]
    assert 0.04 in lrs and 50.0 not in lrs and lrs == sorted(lrs)
    assert tunings["final"].lr == 0.04 and not tunings["final"].notes
    plain = tune(synthetic(0.04, 0.04), ["final"], seeds=[0])
    assert plain["final"].lr != 0.04
    assert [p.lr for p in plain["final"].grid] == [lr for lr in lrs if lr != 0.04]


def test_seeds_are_disjoint():
    assert disjoint_seeds(3, 2, 1000, 0) == ([1000, 1001, 1002], [0, 1])
    with pytest.raises(ValueError, match="overlap"):
        disjoint_seeds(3, 2, 0, 1)


def test_criteria_score_diverged_runs_as_inf():
    losses = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, math.nan, math.nan, math.nan]])
    assert score("final", losses).tolist() == [1.0, math.inf]
    assert score("mean", losses)[0] == 2.5
    assert score("paper50", losses)[0] == 10.0


def test_cosine_baseline_decays_to_zero_over_the_horizon():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = baseline_factory("adamw_cosine", 0.1, steps=4)([p])
    lrs = []
    for _ in range(4):
        p.grad = torch.ones(3)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    sgdm = baseline_factory("sgdm", 0.1, steps=4)([p])
    assert sgdm.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="Did you mean"):
        check_baselines(["adamm"])


def test_paired_bootstrap_ratio():
    a = [1.0, 2.0, 3.0, 4.0]
    assert ratio_ci(a, a) == pytest.approx((1.0, 1.0, 1.0))
    r, lo, hi = ratio_ci([2.0, 4.1, 5.9, math.nan], [1.0, 2.0, 3.0, 1.0])
    assert r == pytest.approx(12.0 / 6.0) and lo <= r <= hi  # the NaN pair is dropped
    assert geometric_mean([0.5, 2.0]) == pytest.approx(1.0)


def test_shipped_suites_validate_against_the_registry():
    assert {"indist", "long", "generalization"} <= set(available_suites())
    for name in available_suites():
        assert load_suite(name).cases
    with pytest.raises(ValueError, match="Did you mean"):
        parse_suite({"cases": [{"task": "mnist_mlp_relux", "steps": 5}]})
    with pytest.raises(ValueError, match="unknown keys"):
        parse_suite({"cases": [{"task": "mnist_mlp_relu", "steps": 5, "stepz": 1}]})
    with pytest.raises(ValueError, match="exactly one of"):
        parse_suite({"cases": [{"task": "mnist_mlp_relu", "steps": 5, "horizon": 2}]})
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_suite({"cases": [{"task": "mnist_mlp_relu", "dataset": "mnist6k", "steps": 5}]})


TINY_SUITE = parse_suite(
    {
        "name": "tiny",
        "seeds": 3,
        "tune_seeds": 2,
        "cases": [
            {"task": "trained", "horizon": 1},
            {"task": "fashion_mnist_mlp_relu", "steps": 6},
        ],
    }
)


@pytest.fixture(scope="module")
def evaluation():
    """A tiny suite end to end; the Fashion-MNIST case is made absent, the tuning calls are
    recorded."""
    torch.manual_seed(0)
    net = lo.create("lstm", hidden_size=6, output_scale=0.1)
    learned = Learned("l2o", net, "memory", "mnist_mlp_sigmoid", "mnist5k", 6, 32)
    calls = []
    real_load = Task.load_data

    def load_data(self, *args, **kwargs):
        if self.dataset_name == "fashion_mnist":
            raise DatasetNotFoundError("fashion_mnist not found; searched: nowhere")
        return real_load(self, *args, **kwargs)

    def recording(task, factory, steps, seed, *args, **kwargs):
        calls.append((seed, kwargs.get("evaluate_test", True)))
        return train_optimizee(task, factory, steps, seed, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Task, "load_data", load_data)
        mp.setattr(runner, "train_optimizee", recording)
        ev = run_suite(
            [learned],
            TINY_SUITE,
            baselines=["sgdm", "adam"],
            grid=LogGrid(1e-2, 1.0),
            log=lambda _: None,
        )
    return ev, calls, net


def test_tuning_never_sees_the_evaluation_seeds(evaluation):
    ev, calls, _ = evaluation
    tuning = {seed for seed, with_test in calls if not with_test}
    evaluated = {seed for seed, with_test in calls if with_test}
    assert tuning == set(ev.tune_seeds) == {0, 1}
    assert evaluated == set(ev.seeds) == {1000, 1001, 1002}


def test_learned_runs_are_the_shared_training_path(evaluation):
    ev, _, net = evaluation
    (case,) = ev.cases
    assert case.case.steps == 6 and case.case.batch_size == 32  # the trained horizon and batch
    task = case.case
    from l2o.tasks import get_task

    again = train_optimizee(
        get_task(task.task, dataset=task.dataset, batch_size=32),
        lambda p: lo.LearnedOptimizer(p, net),
        6,
        seed=1001,
    )
    assert torch.equal(case.learned["l2o"].losses[1], again.train_losses)


def test_missing_data_is_skipped_with_a_visible_note(evaluation):
    ev, _, _ = evaluation
    assert [s["case"] for s in ev.skipped] == ["fashion_mnist_mlp_relu@fashion_mnist:6"]
    assert "SKIPPED fashion_mnist_mlp_relu@fashion_mnist:6" in format_table(ev)


def test_table_rows_ratios_and_summary(evaluation):
    ev, _, _ = evaluation
    table = rows(ev)
    assert len(table) == 2 * 3  # criteria × (learned + 2 baselines)
    for crit in ("final", "mean"):
        group = [r for r in table if r["criterion"] == crit]
        base = [r for r in group if r["kind"] == "baseline"]
        best = min(base, key=lambda r: r["value"])
        assert all(r["best_baseline"] == best["optimizer"] for r in group)
        assert best["ratio"] == pytest.approx(1.0)
        learned = next(r for r in group if r["kind"] == "learned")
        assert learned["ratio"] == pytest.approx(learned["value"] / best["value"])
        assert learned["ratio_ci_low"] <= learned["ratio"] <= learned["ratio_ci_high"]
    text = format_table(ev, table)
    assert "OVERALL l2o [final]: geometric-mean ratio" in text


def test_a_diverging_optimizer_is_counted_not_crashed_on(evaluation):
    ev, _, _ = evaluation
    from l2o.tasks import get_task

    task = get_task("mnist_mlp_sigmoid", dataset="mnist5k", batch_size=32)
    explode = lambda params: torch.optim.SGD(params, lr=math.inf)
    runs = train_runs(task, explode, 6, ev.seeds, task.load_data())
    assert runs.diverged == [True, True, True]
    case = ev.cases[0]
    case.learned["exploding"] = runs
    try:
        ev.learned["exploding"] = "memory"
        table = rows(ev)
        mine = [r for r in table if r["optimizer"] == "exploding"]
        assert all(r["diverged"] == 3 and math.isnan(r["value"]) for r in mine)
        assert "exploding" in format_table(ev, table)
    finally:
        del case.learned["exploding"], ev.learned["exploding"]


def test_json_schema_is_stable(evaluation, tmp_path):
    ev, _, _ = evaluation
    payload = to_json(ev)
    assert payload["schema"] == "l2o.evaluation" and payload["schema_version"] == 3
    assert set(payload) == {
        "schema", "schema_version", "created_utc", "suite", "quick", "criteria", "baselines",
        "learned", "nominals", "measured_at", "seeds", "tune_seeds", "grid", "torch_threads",
        "wall_s", "skipped", "rows", "summary", "summary_by_steps", "cases",
    }  # fmt: skip
    assert ROW_FIELDS == (
        "case", "task", "dataset", "steps", "criterion", "optimizer", "kind", "lr", "value",
        "value_ci95", "seeds", "diverged", "ratio", "ratio_ci_low", "ratio_ci_high",
        "best_baseline", "nominal", "ratio_nominal", "ratio_nominal_ci_low",
        "ratio_nominal_ci_high", "test_loss", "test_loss_ci95", "test_acc", "test_acc_ci95",
        "step_ms", "step_vs_adam", "tuning_notes",
    )  # fmt: skip
    assert all(tuple(r) == ROW_FIELDS for r in payload["rows"])
    assert tuple(payload["summary"][0]) == SUMMARY_FIELDS == (
        "optimizer", "criterion", "cases", "geomean_ratio", "won", "won_significantly",
        "lost_significantly", "nominal", "geomean_ratio_nominal", "won_vs_nominal",
        "won_vs_nominal_significantly", "lost_vs_nominal_significantly", "diverged_runs",
    )  # fmt: skip
    case = payload["cases"][0]
    assert set(case) == {
        "case", "task", "dataset", "steps", "reference_step_time_s", "learned", "baselines",
    }  # fmt: skip
    assert set(case["baselines"]["adam"]) == {"tuning", "runs"}
    assert set(case["baselines"]["adam"]["tuning"]["final"]) == {"lr", "notes", "grid"}
    assert set(case["learned"]["l2o"]) == {
        "train_losses", "test_loss", "test_acc", "diverged", "step_time_s",
    }  # fmt: skip
    paths = write_outputs(ev, tmp_path)
    assert json.loads(paths["json"].read_text())["rows"] == json.loads(json.dumps(payload["rows"]))
    with open(paths["csv"]) as f:
        assert tuple(csv.DictReader(f).fieldnames) == ROW_FIELDS
    with open(paths["overall"]) as f:
        assert [r["optimizer"] for r in csv.DictReader(f)] == ["l2o", "l2o"]
    assert paths["curves"].stat().st_size > 1000 and paths["ratios"].stat().st_size > 1000


def test_cli_rejects_bad_input_early(capsys):
    assert cli.main(["no-such-optimizer", "--suite", "indist"]) == 2
    assert "neither a pretrained name" in capsys.readouterr().err
    assert cli.main(["mlp-mnist", "--suite", "indst"]) == 2
    assert "Did you mean indist" in capsys.readouterr().err
    assert cli.main(["mlp-mnist", "--baselines", "adam,lio"]) == 2
    assert cli.main(["mlp-mnist", "--criterion", "last"]) == 2
    assert cli.main(["--list-suites"]) == 0
    assert "generalization" in capsys.readouterr().out


def test_opt_resolves_names_checkpoints_and_run_folders(tmp_path):
    from l2o.optimizers import checkpoint_io
    from meta_train.evaluation.contenders import resolve_learned
    from meta_train.training import checkpointing as ckpt

    shipped = resolve_learned("mlp-mnist")
    assert (shipped.task, shipped.dataset, shipped.horizon) == ("mnist_mlp_sigmoid", "mnist5k", 200)
    net = lo.create("lstm", hidden_size=4)
    config = {"task": {"name": "mnist_mlp_relu", "dataset": "mnist5k", "batch_size": 64}}
    config["schedule"] = {"horizon": 40}
    payload = {
        "format": ckpt.FORMAT,
        "version": ckpt.VERSION,
        "config": config,
        "lopt": checkpoint_io.to_payload(net),  # as the trainer embeds it
        "meta_optimizer": {},
        "rng": {},
        "position": {},
    }
    ckpt.atomic_save(payload, tmp_path / "last.pt")  # a run folder without best.pt
    run = resolve_learned(str(tmp_path))
    assert run.source == str(tmp_path / "last.pt")
    assert (run.task, run.horizon, run.batch_size) == ("mnist_mlp_relu", 40, 64)
    assert all(
        torch.equal(a, b) for a, b in zip(run.net.state_dict().values(), net.state_dict().values())
    )
    sampled = tmp_path / "sampled.pt"  # meta-trained on a horizon range: evaluated at validation's
    config["schedule"] = {"horizon": {"min": 100, "max": 1000}}
    config["validation"] = {"steps": 300}
    checkpoint_io.save_learned_optimizer(sampled, net, {"config": config})
    assert resolve_learned(str(sampled)).horizon == 300
    del config["validation"]
    checkpoint_io.save_learned_optimizer(sampled, net, {"config": config})
    assert resolve_learned(str(sampled)).horizon == 200  # validation.steps' default
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"neither best\.pt nor last\.pt"):
        resolve_learned(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="neither a pretrained name"):
        resolve_learned(str(tmp_path / "missing"))


# --------------------------------------------------------------------------------------------
# The 2026 contenders: muon_cosine, sf_adamw and each learned optimizer's own nominal term


def test_default_contenders_are_the_2026_set():
    assert DEFAULT_BASELINES == ("sgdm", "adam", "adamw_cosine", "muon_cosine", "sf_adamw")
    assert check_baselines(list(DEFAULT_BASELINES)) == list(DEFAULT_BASELINES)


def test_muon_cosine_decays_the_lr_of_both_halves():
    weight, bias = torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.zeros(3))
    opt = baseline_factory("muon_cosine", 0.1, steps=2)([weight, bias])
    for _ in range(2):
        weight.grad, bias.grad = torch.randn(3, 2), torch.randn(3)
        opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    before = weight.detach().clone(), bias.detach().clone()
    weight.grad, bias.grad = torch.randn(3, 2), torch.randn(3)
    opt.step()  # at the end of the cosine nothing moves, Muon's matrix nor AdamW's bias
    assert torch.equal(before[0], weight.detach()) and torch.equal(before[1], bias.detach())


def test_nominal_factory_is_the_untrained_nominal_term_at_the_tuned_step_size():
    """At step size lr it is the shipped general created untrained from its own kwargs with
    lars_lr = lr (its orthogonal term with general's schedule: tests/l2o/test_general.py), told the
    run's length (400 steps here, twice the meta-training horizon: cosine over 400, step size
    × (400/200)^−½). The first 12 steps are compared: the recipe's boosted steps make later
    losses chaotic in float rounding."""
    from l2o.tasks import get_task
    from meta_train.evaluation.contenders import resolve_learned

    general = resolve_learned("general")
    cfg = general.net.config()
    assert general.nominal_lr_key == "lars_lr" and cfg["nominal"] == "orthogonal"
    assert general.nominal_lr == cfg["lars_lr"]
    task = get_task(general.task, dataset=general.dataset)
    data = task.load_data("cpu")
    horizon = 400

    def losses(factory):
        return train_optimizee(task, factory, 12, seed=3, data=data).train_losses

    def untrained(lr, total_steps=horizon):
        net = lo.create("general", **{**cfg, "lars_lr": lr})
        return losses(lambda p: lo.LearnedOptimizer(p, net, total_steps=total_steps))

    recipe = losses(general.nominal_factory(cfg["lars_lr"], horizon))
    assert torch.equal(recipe, untrained(cfg["lars_lr"]))
    assert not torch.equal(recipe, untrained(cfg["lars_lr"], total_steps=None))  # told 400
    assert not torch.equal(recipe, losses(general.factory(horizon)))  # the residual is off
    larger = losses(general.nominal_factory(2.5 * cfg["lars_lr"], horizon))
    assert torch.equal(larger, untrained(2.5 * cfg["lars_lr"]))
    assert not torch.allclose(larger, recipe)
    lstm = Learned("l2o", lo.create("lstm", hidden_size=4), "memory", None, None, None)
    assert lstm.nominal_lr_key is None
    with pytest.raises(ValueError, match="has no nominal term"):
        lstm.nominal_factory(0.1, horizon)


NOMINAL_SUITE = parse_suite(
    {
        "name": "two horizons",
        "seeds": 3,
        "tune_seeds": 2,
        "cases": [{"task": "trained", "horizon": 1}, {"task": "trained", "horizon": 2}],
    }
)


@pytest.fixture(scope="module")
def with_nominal():
    """A lars ``general`` whose residual has gain 0.5 (as if meta-trained) on two horizons; the
    tuning calls are recorded."""
    torch.manual_seed(0)
    net = lo.create("general", nominal="lars", base_schedule="cosine", total_steps=6)
    with torch.no_grad():
        net.residual_gain.fill_(0.5)
    learned = Learned("gen", net.eval(), "memory", "mnist_mlp_sigmoid", "mnist5k", 6, 32)
    calls = []

    def recording(task, factory, steps, seed, *args, **kwargs):
        calls.append((steps, seed, kwargs.get("evaluate_test", True)))
        return train_optimizee(task, factory, steps, seed, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "train_optimizee", recording)
        ev = run_suite(
            [learned],
            NOMINAL_SUITE,
            baselines=["sgdm"],
            grid=LogGrid(1e-2, 1.0),
            log=lambda _: None,
        )
    return ev, learned, calls


def test_nominal_is_tuned_per_case_like_a_baseline(with_nominal):
    from l2o.tasks import get_task

    ev, learned, calls = with_nominal
    assert ev.nominals == {"nominal": ["gen"]}
    own = learned.nominal_lr
    assert all(
        own in [p.lr for p in c.baselines["nominal"].tunings["final"].grid] for c in ev.cases
    )
    assert {seed for _, seed, with_test in calls if not with_test} == {0, 1}
    grids = []
    for case in ev.cases:
        result = case.baselines["nominal"]
        assert set(result.tunings) == {"final", "mean"}
        grids.append([p.score_mean for p in result.tunings["final"].grid])
        lr, runs = result.for_criterion("final")
        steps = case.case.steps
        task = get_task(case.case.task, dataset=case.case.dataset, batch_size=32)
        again = train_optimizee(task, learned.nominal_factory(lr, steps), steps, seed=1000)
        assert torch.equal(runs.losses[0], again.train_losses)
    assert [c.case.steps for c in ev.cases] == [6, 12] and grids[0] != grids[1]


def test_report_gives_the_ratio_to_the_best_of_all_and_to_nominal(with_nominal):
    ev, _, _ = with_nominal
    table = rows(ev)
    for case in ev.cases:
        for crit in ev.criteria:
            group = {
                r["optimizer"]: r
                for r in table
                if r["case"] == case.case.id and r["criterion"] == crit
            }
            assert group["nominal"]["kind"] == "nominal" and group["sgdm"]["kind"] == "baseline"
            best = min(group["nominal"], group["sgdm"], key=lambda r: r["value"])
            gen = group["gen"]
            assert gen["best_baseline"] == best["optimizer"]
            assert gen["ratio"] == pytest.approx(gen["value"] / best["value"])
            assert gen["nominal"] == "nominal"
            assert gen["ratio_nominal"] == pytest.approx(gen["value"] / group["nominal"]["value"])
            assert gen["ratio_nominal_ci_low"] <= gen["ratio_nominal"]
            assert gen["ratio_nominal"] <= gen["ratio_nominal_ci_high"]
            assert math.isnan(group["sgdm"]["ratio_nominal"]) and group["sgdm"]["nominal"] == ""
    (final, _mean) = summary(ev, table)
    ratios = [
        r["ratio_nominal"] for r in table if r["optimizer"] == "gen" and r["criterion"] == "final"
    ]
    assert final["nominal"] == "nominal"
    assert final["geomean_ratio_nominal"] == pytest.approx(geometric_mean(ratios))
    assert final["won_vs_nominal"] == sum(r < 1 for r in ratios)
    text = format_table(ev, table)
    assert "ratio to nominal [95% CI]" in text
    assert "OVERALL gen [final] vs nominal: geometric-mean ratio" in text
    assert "nominal: gen's nominal term, untrained" in text
    assert to_json(ev)["nominals"] == {"nominal": ["gen"]}


def test_several_learned_optimizers_name_their_nominals():
    from meta_train.evaluation.contenders import nominal_contenders

    gen = Learned("gen", lo.create("general", nominal="sgdm"), "memory", None, None, None)
    lstm = Learned("l2o", lo.create("lstm", hidden_size=4), "memory", None, None, None)
    assert nominal_contenders([gen]) == {"nominal": ["gen"]}
    assert nominal_contenders([gen, lstm]) == {"nominal": ["gen"]}
    other = Learned("adam", lo.create("general", nominal="adam"), "memory", None, None, None)
    assert nominal_contenders([gen, lstm, other]) == {
        "nominal:gen": ["gen"],
        "nominal:adam": ["adam"],
    }
    none = Learned("plain", lo.create("general", nominal="none"), "memory", None, None, None)
    assert nominal_contenders([none]) == {}


def test_variants_with_the_same_nominal_term_share_one_contender():
    """An ablation's checkpoints (same kwargs, other weights) and an untrained copy share one
    nominal contender, tuned once; a kwarg that changes the nominal term splits them."""
    from meta_train.evaluation.contenders import nominal_contenders

    def gen(name, seed, **kwargs):
        torch.manual_seed(seed)
        net = lo.create("general", nominal="lars", base_schedule="cosine", **kwargs)
        with torch.no_grad():
            net.residual_gain.fill_(0.3 * seed)
        return Learned(name, net, "memory", None, None, None)

    a, b, c = gen("a", 1), gen("b", 2), gen("c", 1, lars_lr=0.01)
    assert nominal_contenders([a, b, a.untrained()]) == {"nominal": ["a", "b", "untrained:a"]}
    assert nominal_contenders([a, c, b]) == {"nominal:a": ["a", "b"], "nominal:c": ["c"]}


def test_untrained_is_the_same_optimizer_before_meta_training():
    """``untrained:SPEC``: the checkpoint's kwargs with its learned parts at their init, so a
    ``general`` runs exactly its nominal term at the recipe's own step size."""
    from meta_train.evaluation.contenders import resolve_learned

    shipped = resolve_learned("general")
    untrained = resolve_learned("untrained:general")
    assert untrained.name == "untrained:general"
    assert untrained.net.config() == shipped.net.config()
    assert untrained.net.residual_gain.item() == 0.0 and shipped.net.residual_gain.item() != 0.0
    assert resolve_learned("untrained:general", name="u").name == "u"
    from l2o.tasks import get_task

    task = get_task("mnist_mlp_sigmoid", dataset="mnist5k", batch_size=32)
    lr = shipped.net.config()["lars_lr"]
    nominal = train_optimizee(task, shipped.nominal_factory(lr, 8), 8, seed=3)
    plain = train_optimizee(task, untrained.factory(8), 8, seed=3)
    assert torch.equal(nominal.train_losses, plain.train_losses)
    with pytest.raises(ValueError, match="neither a pretrained name"):
        resolve_learned("untrained:no-such-optimizer")


def test_sf_adamw_says_where_its_losses_are_measured(evaluation):
    ev, _, _ = evaluation
    assert to_json(ev)["measured_at"] == {}
    ev.baselines.append("sf_adamw")
    try:
        notes = to_json(ev)["measured_at"]
    finally:
        ev.baselines.remove("sf_adamw")
    assert "gradient is taken, y in train mode" in notes["sf_adamw"]
    assert "averaged point x" in notes["sf_adamw"]


def test_every_nominal_kind_has_a_tuned_contender():
    """A ``general`` nominal kind missing here would silently get no ``nominal`` row."""
    from l2o.optimizers.general import NOMINALS
    from meta_train.evaluation.contenders import NOMINAL_LR_KEYS

    assert set(NOMINAL_LR_KEYS) == set(NOMINALS) - {"none"}
