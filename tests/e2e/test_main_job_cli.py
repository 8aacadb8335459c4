"""README command 1 as a user runs it (`raylm run configs/demo.yaml`), with small overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_demo_job_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, RAY_ADDRESS="")
    cmd = [sys.executable, "-m", "raylm", "run", os.path.join(REPO, "configs", "demo.yaml"),
           "trainer.max_steps=6", "trainer.eval_every=3", "trainer.checkpoint_every=3", "trainer.warmup_steps=1",
           "data.tokenizer.sample_docs=2000", "tracking.wandb.mode=disabled"]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "validation perplexity:" in res.stdout and "sample:" in res.stdout
    out = json.load(open(tmp_path / "runs" / "demo" / "main.json"))
    assert out["validation"]["perplexity"] > 1 and out["sample"].startswith("Return the")
    png = tmp_path / "runs" / "demo" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out["export_dir"])
    AutoTokenizer.from_pretrained(out["export_dir"])
    saved = (tmp_path / "runs" / "demo" / "config.yaml").read_text()
    assert "max_steps: 6" in saved
