"""Tuning control logic without a cluster: space validation, resources, registries, outputs."""

from __future__ import annotations

import importlib.util

import pytest

from raylm.config import load_config, validate
from raylm.errors import UserError
from raylm.tuning.config import ResourcesConfig, TuningConfig
from raylm.tuning.driver import _own_checkpoint, train_run_name, trial_raw
from raylm.tuning.resources import fit_trials, max_concurrent
from raylm.tuning.results import (
    COMPLETED,
    FAILED,
    STOPPED,
    TrialRow,
    best_config,
    markdown,
    pick_best,
)
from raylm.tuning.space import check_space, param_space, pbt_mutations, space_problems


def _tuning(space: dict, **kw) -> TuningConfig:
    return TuningConfig.model_validate({"space": space, **kw})


def test_valid_space_has_no_problems_and_maps_to_tune_domains():
    t = _tuning({
        "trainer.optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        "trainer.batch_size": {"type": "choice", "values": [8, 16]},
        "trainer.schedule.warmup_steps": {"type": "randint", "low": 0, "high": 5},
        "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
        "trainer.optimizer.weight_decay": {"type": "grid", "values": [0.0, 0.1]},
        "data.tokenizer.vocab_size": {"type": "choice", "values": [512, 1024]},
    })
    assert space_problems(t, {}) == []
    space = param_space(t)["train_loop_config"]
    assert space["trainer.optimizer.weight_decay"] == {"grid_search": [0.0, 0.1]}
    assert 1e-4 <= space["trainer.optimizer.lr"].sample() <= 1e-2
    assert space["trainer.schedule.warmup_steps"].sample() in range(5)


def test_each_bad_dimension_gives_one_line():
    t = _tuning({
        "trainer.lrr": {"type": "uniform", "low": 0, "high": 1},
        "trainer.optimizer.lr": {"type": "loguniform", "low": 0.0, "high": 1e-2},
        "model.dropout": {"type": "uniform", "low": 0.3, "high": 0.1},
        "trainer.batch_size": {"type": "choice", "values": []},
        "nosection.x": {"type": "choice", "values": [1]},
    })
    problems = space_problems(t, {})
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "tuning.space.trainer.lrr: unknown key ('lrr' is not a key of trainer)" in text
    assert "tuning.space.trainer.optimizer.lr: loguniform bounds must be positive" in text
    assert "tuning.space.model.dropout: low (0.3) must be below high (0.1)" in text
    assert "tuning.space.trainer.batch_size: choice needs a non-empty 'values' list" in text
    assert "'nosection' is not a key of the root config" in text


def test_values_are_checked_against_the_config_schema():
    t = _tuning({
        "trainer.schedule.type": {"type": "choice", "values": ["cosine", "sawtooth"]},
        "trainer.schedule.warmup_steps": {"type": "uniform", "low": 0, "high": 10},
        "cluster.num_cpus": {"type": "choice", "values": [2]},
        "trainer": {"type": "choice", "values": [1]},
    })
    problems = space_problems(t, {})
    assert any("value 'sawtooth' is not valid" in p for p in problems)
    assert any("is an integer; use randint" in p for p in problems)
    assert any("'cluster' section cannot be tuned" in p for p in problems)
    assert any("is a section, not a value" in p for p in problems)


def test_check_space_raises_user_error_with_all_problems():
    t = _tuning({"trainer.optimizer.lr": {"type": "uniform", "low": 1, "high": 1}, "x.y": {"type": "grid", "values": []}})
    with pytest.raises(UserError) as exc:
        check_space(t, {})
    assert len(exc.value.problems) == 2
    assert exc.value.hint


def test_grid_needs_the_random_searcher():
    t = _tuning({"trainer.optimizer.lr": {"type": "grid", "values": [1e-3]}}, searcher={"type": "optuna"})
    assert any("grid is only supported by the random searcher" in p for p in space_problems(t, {}))


def test_unknown_scheduler_type_is_a_config_error():
    with pytest.raises(UserError):
        validate({"tuning": {"scheduler": {"type": "hyperband"}}})


def test_load_config_accepts_a_tuning_section(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("tuning:\n  space:\n    trainer.optimizer.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    cfg = load_config(p, ["tuning.num_samples=3", "tuning.scheduler.type=pbt"])
    assert cfg.tuning is not None and cfg.tuning.num_samples == 3
    assert cfg.tuning.scheduler.type == "pbt"
    assert cfg.tuning.space["trainer.optimizer.lr"].low == 1e-4


def test_pbt_mutations_keep_lists_and_domains():
    t = _tuning({"trainer.optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
                 "trainer.batch_size": {"type": "choice", "values": [8, 16]}})
    muts = pbt_mutations(t)["train_loop_config"]
    assert muts["trainer.batch_size"] == [8, 16]
    assert 1e-4 <= muts["trainer.optimizer.lr"].sample() <= 1e-2


@pytest.mark.parametrize(
    ("cluster", "res", "requested", "expected"),
    [
        ({"CPU": 8.0}, ResourcesConfig(workers_per_trial=2, cpus_per_worker=1), None, 4),
        ({"CPU": 8.0}, ResourcesConfig(workers_per_trial=2, cpus_per_worker=1), 3, 3),
        ({"CPU": 8.0}, ResourcesConfig(workers_per_trial=1, cpus_per_worker=3), 10, 2),
        ({"CPU": 64.0, "GPU": 4.0}, ResourcesConfig(workers_per_trial=2, gpus_per_worker=1), None, 2),
        ({"CPU": 64.0, "GPU": 4.0}, ResourcesConfig(workers_per_trial=1, gpus_per_worker=1), 8, 4),
        ({"CPU": 3.0, "GPU": 4.0}, ResourcesConfig(workers_per_trial=1, gpus_per_worker=1), None, 3),
    ],
)
def test_max_concurrent_trials_from_cluster_resources(cluster, res, requested, expected):
    assert max_concurrent(cluster, res, requested) == expected


def test_a_trial_that_cannot_fit_is_a_user_error():
    res = ResourcesConfig(workers_per_trial=2, gpus_per_worker=1)
    assert fit_trials({"CPU": 16.0}, res) == 0
    with pytest.raises(UserError, match="one trial needs 2 CPU and 2 GPU but the cluster has 16 CPU and 0 GPU"):
        max_concurrent({"CPU": 16.0}, res, None)


def test_trial_config_applies_sample_resources_and_wandb_group():
    base = validate({"trainer": {"scaling": {"num_workers": 4}}, "tuning": {"name": "sw1"}}).model_dump(mode="json")
    t = _tuning({"trainer.optimizer.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, name="sw1",
                resources={"workers_per_trial": 1, "cpus_per_worker": 2})
    cfg = validate(trial_raw(base, {"trainer.optimizer.lr": 0.15, "model.dropout": 0.2}, t, "raylm_trial_ab_00001"))
    assert cfg.trainer.optimizer.lr == 0.15 and cfg.model.dropout == 0.2
    assert (cfg.trainer.scaling.num_workers, cfg.trainer.scaling.cpus_per_worker, cfg.trainer.scaling.use_gpu) == (1, 2.0, False)
    assert cfg.trainer.run_name == "raylm_trial_ab_00001"
    assert cfg.tracking.wandb.group == "sw1" and "tune" in cfg.tracking.wandb.tags
    assert cfg.tracking.wandb.mode == "offline"
    assert cfg.tuning is None


def test_a_pbt_clone_gets_its_own_train_run():
    assert train_run_name("t_00001", None) == "t_00001"
    clone = train_run_name("t_00001", "/s/train/t_00000/checkpoint_1")
    assert clone.startswith("t_00001-from-") and clone == train_run_name("t_00001", "/s/train/t_00000/checkpoint_1")
    assert _own_checkpoint("/s/train/t_00001/checkpoint_2", "/s/train", "t_00001")
    assert not _own_checkpoint("/s/train/t_00000/checkpoint_2", "/s/train", "t_00001")


def _row(tid: str, status: str, final: float | None, **params) -> TrialRow:
    return TrialRow(trial_id=tid, status=status, params=params, final=final, best=final, step=10, reports=1)


def test_pick_best_prefers_full_budget_trials_and_skips_failures():
    rows = [_row("a", STOPPED, 0.1), _row("b", COMPLETED, 0.5), _row("c", COMPLETED, 0.4),
            _row("d", FAILED, None), _row("e", COMPLETED, float("nan"))]
    assert pick_best(rows, "min").trial_id == "c"
    assert pick_best(rows, "max").trial_id == "b"
    assert pick_best([_row("a", STOPPED, 0.3), _row("d", FAILED, None)], "min").trial_id == "a"
    assert pick_best([_row("d", FAILED, None)], "min") is None


def test_best_config_is_the_base_with_the_best_values_and_no_tuning():
    cfg = validate({"trainer": {"optimizer": {"lr": 1e-3}}, "tuning": {"name": "sw2", "space": {
        "trainer.optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}})
    best = best_config(cfg, _row("x", COMPLETED, 0.1, **{"trainer.optimizer.lr": 5e-3, "trainer.batch_size": 8}))
    assert best.tuning is None
    assert (best.trainer.optimizer.lr, best.trainer.batch_size, best.trainer.run_name) == (5e-3, 8, "sw2-best")


def test_markdown_table_lists_failures_with_their_reason():
    from raylm.tuning.results import SweepSummary

    rows = [_row("a", COMPLETED, 0.4, **{"trainer.optimizer.lr": 1e-3}),
            TrialRow("b", FAILED, {"trainer.optimizer.lr": 1e9}, None, None, 0, 0, reason="FloatingPointError: loss is inf")]
    md = markdown(SweepSummary("/x/sw", "val_loss", "min", 10, rows, best_trial="a"))
    lines = md.splitlines()
    assert lines[0].startswith("| trial | status | trainer.optimizer.lr | val_loss (final)")
    assert "| a * | completed | 0.001 | 0.4 |" in lines[2]
    assert "FloatingPointError: loss is inf" in lines[3] and "failed" in lines[3]


def test_missing_searcher_extra_names_the_install_line(monkeypatch):
    from raylm.tuning import searchers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hyperopt" else real(name, *a))
    t = _tuning({"trainer.optimizer.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, searcher={"type": "hyperopt"})
    with pytest.raises(UserError) as exc:
        searchers.build_searcher(t, 2)
    assert "needs the 'hyperopt' package" in exc.value.problems[0]
    assert "pip install 'raylm[hyperopt]'" in exc.value.hint


@pytest.mark.parametrize("kind", ["random", "optuna", "hyperopt"])
def test_searchers_build_with_the_concurrency_limit(kind):
    from raylm.tuning.searchers import build_searcher

    if kind != "random" and importlib.util.find_spec(kind) is None:
        pytest.skip(f"{kind} not installed")
    t = _tuning({"trainer.optimizer.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, searcher={"type": kind})
    s = build_searcher(t, 3)
    assert getattr(s, "max_concurrent", None) == 3 or getattr(s, "_max_concurrent", None) == 3


@pytest.mark.parametrize("kind", ["asha", "pbt", "fifo"])
def test_scheduler_registry(kind):
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        PopulationBasedTraining,
    )

    from raylm.tuning.schedulers import build_scheduler

    t = _tuning({"trainer.optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                scheduler={"type": kind, "grace_period": 500})
    s = build_scheduler(t, 100)
    expected = {"asha": ASHAScheduler, "pbt": PopulationBasedTraining, "fifo": FIFOScheduler}[kind]
    assert isinstance(s, expected)
    if kind == "asha":
        assert s._max_t == 100  # grace_period is capped at the budget instead of asserting


def test_a_sweep_with_missing_trials_counts_as_interrupted():
    from raylm.tuning.results import _interrupted, expected_trials

    t = _tuning({"trainer.optimizer.lr": {"type": "grid", "values": [1, 2, 3]},
                 "trainer.batch_size": {"type": "grid", "values": [8, 16]}}, num_samples=2)
    assert expected_trials(t) == 12
    rows = [_row(str(i), COMPLETED, 0.1) for i in range(11)]
    assert _interrupted(rows, t) and not _interrupted(rows + [_row("x", FAILED, None)], t)
    assert _interrupted(rows + [_row("y", "unfinished", None)], t)


@pytest.mark.parametrize("scheduler", ["asha", "pbt", "fifo"])
def test_a_cluster_without_state_api_refuses_early_stopping_sweeps(monkeypatch, caplog, scheduler):
    # Fakes only the probe's answer: starting a second Ray without a dashboard costs ~10 s here;
    # the leak it guards against is measured by tests/integration/test_tune.py.
    from raylm.tuning import sweep

    monkeypatch.setattr(sweep, "state_api_reachable", lambda wait_s=20.0: False)
    t = TuningConfig.model_validate({"space": {"trainer.optimizer.lr": {"type": "grid", "values": [0.1]}},
                                     "scheduler": {"type": scheduler}})
    if scheduler == "fifo":
        sweep.check_trial_cleanup(t)  # runs, with a warning
        assert "no state API" in caplog.text
    else:
        with pytest.raises(UserError) as err:
            sweep.check_trial_cleanup(t)
        assert "dashboard" in err.value.problems[0] and "fifo" in err.value.hint
    monkeypatch.setattr(sweep, "state_api_reachable", lambda wait_s=20.0: True)
    sweep.check_trial_cleanup(t)


def test_embedded_ray_starts_its_dashboard_on_localhost_unless_the_config_says():
    from raylm.cluster import init_kwargs
    from raylm.cluster.config import ClusterConfig

    kw = init_kwargs(ClusterConfig())
    assert kw["include_dashboard"] is True and kw["dashboard_host"] == "127.0.0.1"
    assert init_kwargs(ClusterConfig(include_dashboard=False))["include_dashboard"] is False
