"""The root config: YAML + dotted overrides, one readable line per problem."""

from __future__ import annotations

import glob
import os

import pytest

from raylm.config import RootConfig, dump_config, load_config, parse_override
from raylm.errors import UserError

pytestmark = pytest.mark.unit
REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def test_overrides_parse_yaml_values():
    assert parse_override("trainer.lr=3e-4") == (["trainer", "lr"], 3e-4)
    assert parse_override("trainer.max_steps=20") == (["trainer", "max_steps"], 20)
    assert parse_override("tracking.wandb.mode=disabled") == (["tracking", "wandb", "mode"], "disabled")
    assert parse_override("model.init_from=null") == (["model", "init_from"], None)


def test_overrides_win_over_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trainer:\n  lr: 0.1\n  max_steps: 100\n")
    cfg = load_config(p, ["trainer.max_steps=20", "trainer.lr=1e-3"])
    assert cfg.trainer.max_steps == 20 and cfg.trainer.lr == 1e-3


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RootConfig)
    # The dump is a valid config too (it is what every run saves).
    again = RootConfig.model_validate(__import__("yaml").safe_load(dump_config(cfg)))
    assert again == cfg


def test_one_line_per_problem_naming_the_field():
    with pytest.raises(UserError) as exc:
        load_config(None, ["trainer.lrr=1", "trainer.lr=-1", "model.n_embd=abc"])
    lines = exc.value.problems
    assert len(lines) == 3
    assert any("unknown key 'trainer.lrr'" in l for l in lines)
    assert any("trainer.lr" in l and "greater than 0" in l for l in lines)
    assert any("model.n_embd" in l and "integer" in l for l in lines)


def test_cross_field_rules():
    with pytest.raises(UserError, match="divisible"):
        load_config(None, ["model.n_embd=130", "model.n_head=4"])
    with pytest.raises(UserError, match="warmup_steps"):
        load_config(None, ["trainer.max_steps=5", "trainer.warmup_steps=10"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+"):
        load_config(bad)


def test_bad_override_syntax():
    with pytest.raises(UserError, match="section.key=value"):
        load_config(None, ["trainer.lr"])
    with pytest.raises(UserError, match="name a section"):
        load_config(None, ["lr=1"])
