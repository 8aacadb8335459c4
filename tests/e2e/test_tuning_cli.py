"""`raylm tune` as a user runs it, for input errors: exit 2, one line per problem, before Ray."""

from __future__ import annotations

import os
import subprocess
import sys

from raylm.config import load_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RECIPE = os.path.join(REPO, "configs", "tune-demo.yaml")


def raylm(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "raylm", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_recipe_is_a_valid_sweep():
    from raylm.tuning.space import space_problems

    cfg = load_config(RECIPE)
    assert cfg.tuning is not None and space_problems(cfg.tuning, cfg.model_dump(mode="json")) == []


def test_bad_search_space_exits_2_with_one_line_per_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tuning:\n  space:\n"
        "    trainer.lrr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
        "    trainer.optimizer.lr: {type: loguniform, low: 0, high: 1.0e-2}\n"
        "    model.dropout: {type: uniform, low: 0.3, high: 0.1}\n"
        "    trainer.batch_size: {type: choice, values: []}\n"
    )
    res = raylm("tune", str(bad), cwd=str(tmp_path))
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert "unknown key ('lrr' is not a key of trainer)" in res.stderr
    assert "low (0.3) must be below high (0.1)" in res.stderr
    assert not (tmp_path / "runs").exists()  # failed before anything started


def test_a_config_without_tuning_section_is_refused(tmp_path):
    res = raylm("tune", os.path.join(REPO, "configs", "demo.yaml"), cwd=str(tmp_path))
    assert res.returncode == 2 and "no 'tuning' section" in res.stderr
