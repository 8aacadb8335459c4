"""The root config: YAML + dotted overrides, one readable line per problem."""

from __future__ import annotations

import glob
import logging
import os
import typing

import pytest
from pydantic import BaseModel

import raylm.config
from raylm.config import (
    RootConfig,
    describe_config,
    dump_config,
    load_config,
    parse_override,
    section_model,
    validate,
)
from raylm.errors import UserError

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def test_overrides_parse_yaml_values():
    assert parse_override("trainer.lr=3e-4") == (["trainer", "lr"], 3e-4)
    assert parse_override("trainer.max_steps=20") == (["trainer", "max_steps"], 20)
    assert parse_override("tracking.wandb.mode=disabled") == (["tracking", "wandb", "mode"], "disabled")
    assert parse_override("model.init_from=null") == (["model", "init_from"], None)


def test_overrides_win_over_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trainer:\n  optimizer: {lr: 0.1}\n  max_steps: 100\n")
    cfg = load_config(p, ["trainer.max_steps=20", "trainer.optimizer.lr=1e-3"])
    assert cfg.trainer.max_steps == 20 and cfg.trainer.optimizer.lr == 1e-3


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RootConfig)
    # The dump is a valid config too (it is what every run saves).
    again = RootConfig.model_validate(__import__("yaml").safe_load(dump_config(cfg)))
    assert again == cfg
    if cfg.tuning is not None:  # a sweep's space names keys and values the config takes (e.g. model.adapter.r)
        from raylm.tuning.space import space_problems

        assert space_problems(cfg.tuning, cfg.model_dump(mode="json")) == []


def test_one_line_per_problem_naming_the_field():
    with pytest.raises(UserError) as exc:
        load_config(None, ["trainer.lrr=1", "trainer.optimizer.lr=-1", "model.n_embd=abc"])
    lines = exc.value.problems
    assert len(lines) == 3
    assert any("unknown key 'trainer.lrr'" in l and "did you mean 'trainer.optimizer.lr'" in l
               and "see `raylm config show CONFIG` for the keys" in l for l in lines)
    assert any("trainer.optimizer.lr" in l and "greater than 0" in l for l in lines)
    assert any("model.n_embd" in l and "integer" in l for l in lines)


def test_cross_field_rules(caplog):
    with pytest.raises(UserError, match="divisible"):
        load_config(None, ["model.n_embd=130", "model.n_head=4"])
    # A short try of a recipe (issue 27's `trainer.max_steps=8` on the demo) runs: warmup is capped, with a notice.
    cfg = load_config(None, ["trainer.max_steps=5", "trainer.schedule.warmup_steps=10"])
    assert cfg.trainer.schedule.warmup_steps == 5
    assert "warmup_steps (10) is above max_steps (5)" in caplog.text


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+"):
        load_config(bad)


def test_bad_override_syntax():
    with pytest.raises(UserError, match="section.key=value"):
        load_config(None, ["trainer.optimizer.lr"])
    with pytest.raises(UserError, match="name a section"):
        load_config(None, ["lr=1"])


# --- every field documented, and discoverable with `raylm config show` -------------------------


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every section model below it (also inside lists)."""
    out = [model]
    for f in model.model_fields.values():
        candidates = [f.annotation, *typing.get_args(f.annotation)]
        sub = next((m for m in map(section_model, candidates) if m is not None), None)
        if sub is not None:
            out += [m for m in _models(sub) if m not in out]
    return out


def test_every_field_of_every_section_has_a_description():
    models = _models(RootConfig)
    assert {"WorkerGroupConfig", "ScheduleSection", "WandbConfig", "ResourcesConfig"} <= {m.__name__ for m in models}
    missing = [f"{m.__name__}.{name}" for m in models
               for name, f in m.model_fields.items() if not (f.description or "").strip()]
    assert missing == []


def test_config_show_lists_each_key_with_value_default_and_description(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trainer:\n  optimizer: {lr: 0.001}\n")
    lines = describe_config(load_config(p, ["trainer.max_steps=50"]), width=200).splitlines()
    assert "trainer.optimizer.lr = 0.001  (default 0.003)  Peak learning rate." in lines
    assert "trainer.max_steps = 50  (default 200)  Optimizer steps (the lr schedule's horizon)." in lines
    assert ("trainer.schedule.type = cosine  (default)  Decay after warmup: cosine, linear, or constant "
            "(no decay).") in lines
    headers = [line.split("  ")[0] for line in lines if line.startswith("[")]
    assert headers[:3] == ["[cluster]", "[data]", "[data.tokenizer]"] and headers.index("[model]") > 2
    assert {"[trainer.scaling]", "[trainer.optimizer]", "[trainer.schedule]", "[trainer.eval]",
            "[trainer.checkpoint]", "[trainer.export]", "[tuning]", "[k8s.worker_groups[0]]"} <= set(headers)
    # A narrow terminal: a long description wraps under its key, indented.
    narrow = describe_config(load_config(p), width=60).splitlines()
    i = narrow.index("trainer.batch_size = 16  (default)")
    assert narrow[i + 1].startswith("    Examples (blocks) per worker")
    assert all(len(line) <= 60 for line in narrow[i + 1:i + 4])


# --- old flat trainer keys still load ----------------------------------------------------------

OLD_TRAINER = """
trainer:
  num_workers: 3
  use_gpu: false
  cpus_per_worker: 2
  strategy: fsdp
  max_failures: 1
  lr: 0.01
  weight_decay: 0.02
  betas: [0.8, 0.9]
  grad_clip: 0.5
  warmup_steps: 7
  schedule: linear
  min_lr_ratio: 0.2
  eval_every: 11
  eval_batches: 3
  best_metric: val_ppl
  best_mode: min
  checkpoint_every: 13
  num_to_keep: 4
  export_checkpoint: best
  export_dir: out/model
  max_steps: 99
"""

NEW_TRAINER = """
trainer:
  max_steps: 99
  scaling: {num_workers: 3, use_gpu: false, cpus_per_worker: 2, strategy: fsdp, max_failures: 1}
  optimizer: {lr: 0.01, weight_decay: 0.02, betas: [0.8, 0.9], grad_clip: 0.5}
  schedule: {type: linear, warmup_steps: 7, min_lr_ratio: 0.2}
  eval: {every: 11, batches: 3, best_metric: val_ppl, best_mode: min}
  checkpoint: {every: 13, num_to_keep: 4}
  export: {checkpoint: best, dir: out/model}
"""


@pytest.fixture
def moves(caplog, monkeypatch):
    """The "moved to" lines of this test (each is said once per process: start from none said)."""
    monkeypatch.setattr(raylm.config, "_SAID", set())
    caplog.set_level(logging.WARNING, logger="raylm.config")
    return lambda: [r.getMessage() for r in caplog.records if " moved to " in r.getMessage()]


def test_an_old_flat_trainer_section_loads_to_the_same_values_with_one_line_per_moved_key(tmp_path, moves):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD_TRAINER)
    new.write_text(NEW_TRAINER)
    assert load_config(old) == load_config(new)
    said = moves()
    assert len(said) == 20 and len(set(said)) == 20
    assert "trainer.lr moved to trainer.optimizer.lr" in said
    assert "trainer.schedule moved to trainer.schedule.type" in said
    assert "trainer.eval_every moved to trainer.eval.every" in said
    load_config(old)
    assert len(moves()) == 20  # once per process


def test_old_dotted_overrides_land_at_the_new_keys(tmp_path, moves):
    new = tmp_path / "new.yaml"
    new.write_text(NEW_TRAINER)
    cfg = load_config(new, ["trainer.lr=1e-3", "trainer.schedule=constant", "trainer.num_workers=5",
                            "trainer.eval_every=2"])
    t = cfg.trainer
    assert (t.optimizer.lr, t.schedule.type, t.scaling.num_workers, t.eval.every) == (1e-3, "constant", 5, 2)
    assert t.schedule.warmup_steps == 7 and t.optimizer.weight_decay == 0.02  # the rest of each section stays
    assert sorted(moves()) == ["trainer.eval_every moved to trainer.eval.every",
                               "trainer.lr moved to trainer.optimizer.lr",
                               "trainer.num_workers moved to trainer.scaling.num_workers",
                               "trainer.schedule moved to trainer.schedule.type"]
    # A mapping at trainer.schedule is the new section, not the old key.
    assert load_config(None, ["trainer.schedule={type: linear}"]).trainer.schedule.type == "linear"


def test_old_keys_in_a_search_space_and_in_trial_samples(tmp_path, moves):
    from raylm.tuning.space import apply_dotted, space_problems

    p = tmp_path / "tune.yaml"
    p.write_text("tuning:\n  space:\n    trainer.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
                 "    trainer.warmup_steps: {type: randint, low: 0, high: 5}\n")
    cfg = load_config(p)
    assert list(cfg.tuning.space) == ["trainer.optimizer.lr", "trainer.schedule.warmup_steps"]
    assert space_problems(cfg.tuning, cfg.model_dump(mode="json")) == []
    raw = apply_dotted(cfg.model_dump(mode="json"), {"trainer.lr": 0.02})  # an older sweep's sample
    assert raylm.config.validate(raw).trainer.optimizer.lr == 0.02
    assert "trainer.lr moved to trainer.optimizer.lr" in moves()


def test_an_old_key_beside_its_new_one_is_an_error(tmp_path):
    p = tmp_path / "both.yaml"
    p.write_text("trainer:\n  lr: 0.1\n  optimizer: {lr: 0.2}\n")
    with pytest.raises(UserError, match="trainer.lr and trainer.optimizer.lr are both set"):
        load_config(p)


def test_old_data_stream_keys_load_into_data_stream_and_keep_the_prepare_fingerprint(tmp_path, moves):
    """Issue 28: the keys training reads when streaming moved to `data.stream`; old configs and overrides keep
    working (one notice per key), and the prepared shards' fingerprint keys are what they were."""
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("data:\n  shuffle_buffer_rows: 7\n  sharding: stride\n  group_by_length: false\n")
    new.write_text("data:\n  stream: {shuffle_buffer_rows: 7, sharding: stride, group_by_length: false}\n")
    assert load_config(old) == load_config(new)
    assert sorted(moves()) == ["data.group_by_length moved to data.stream.group_by_length",
                               "data.sharding moved to data.stream.sharding",
                               "data.shuffle_buffer_rows moved to data.stream.shuffle_buffer_rows"]
    assert load_config(None, ["data.length_group_batches=9"]).data.stream.length_group_batches == 9
    with pytest.raises(UserError, match="data.sharding and data.stream.sharding are both set"):
        validate({"data": {"sharding": "stride", "stream": {"sharding": "split"}}})
    flat = load_config(new).data.flat_dump(set())
    assert flat["shuffle_buffer_rows"] == 7 and flat["sharding"] == "stride" and "stream" not in flat
