"""Instruction tuning as a user runs it (issue 29): `raylm train` (prepare -> train with LoRA on packed rows, 2
workers, a real embedded Ray) -> `raylm export` (the adapter directory and --merge) -> `raylm eval A B --input` ->
`raylm predict`, on a tiny Llama saved here and a tokenizer trained here."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def raylm(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, RAY_ADDRESS="")
    return subprocess.run([sys.executable, "-m", "raylm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def arithmetic_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        rows.append({"question": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}.\n#### {a + b}"})
    return rows


def write_inputs(tmp: Path) -> None:
    """Training rows (with a bad line of each kind), held-out rows, a base tokenizer and a tiny Llama."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from raylm.datasets.tokenizers import train_bpe

    lines = [json.dumps(r) for r in arithmetic_rows(160, 0)]
    lines += ['{"question": "What is 1 plus', json.dumps({"question": "Empty?", "answer": "  "}),
              json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
              json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
              # a prompt longer than data.max_length: truncation would leave no answer token -> too_long
              json.dumps({"question": "What is " + " plus ".join(["1"] * 200) + "?", "answer": "#### 200"})]
    (tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp / "held.jsonl").write_text("\n".join(json.dumps(r) for r in arithmetic_rows(12, 1)) + "\n")
    train_bpe((f"{r['question']} {r['answer']}" for r in arithmetic_rows(300, 2)), tmp / "tok", 400, 1)
    tok = AutoTokenizer.from_pretrained(tmp / "tok")
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=128, eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(conf).save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")


def test_lora_sft_on_packed_rows_trains_exports_scores_and_predicts(tmp_path):
    write_inputs(tmp_path)
    cfg = {
        "cluster": {"storage_path": "runs"},
        "data": {"source": "train.jsonl", "prepared_dir": "prepared", "max_length": 128, "validation_fraction": 0.1,
                 "tokenizer": {"path": "base"}, "sft": {"prompt_field": "question", "response_field": "answer",
                                                        "packing": True, "max_new_tokens": 16}},
        "model": {"init_from": "base", "adapter": {"type": "lora", "r": 4, "alpha": 8}},
        "trainer": {"task": "sft", "run_name": "sft", "batch_size": 2, "max_steps": 6, "log_every": 1,
                    "scaling": {"num_workers": 2}, "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 0},
                    "eval": {"every": 3, "batches": 2}, "checkpoint": {"every": 3}},
        "tracking": {"wandb": {"mode": "disabled"}},
    }
    import yaml

    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    res = raylm("train", "sft.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "trainable" in res.stdout  # the adapter's parameter count, printed at start

    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    # Every bad row counted under its reason; the ledger balances.
    assert manifest["rejected"] == {"empty_message": 1, "malformed_json": 1, "no_assistant_turn": 1, "too_long": 1,
                                    "unknown_role": 1}
    assert manifest["ledger_balanced"] and manifest["rows_kept"] == 160
    train = manifest["sft_summary"]["train"]
    assert train["rows"] < train["examples"] and train["row_efficiency"] > 0.8  # packed, several examples a row
    assert 0.2 < train["trained_share"] < 0.9  # the answers, not the prompts
    assert train["truncated"] == 0

    adapter = tmp_path / "runs" / "sft" / "export"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    res = raylm("export", "runs/sft", "--merge", "--output", "merged", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "merged" / "config.json").is_file()
    gen = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tok.convert_tokens_to_ids("<|im_end|>") in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list)
                                                       else [gen["eos_token_id"]])  # stops at the end of the turn

    res = raylm("eval", "base", "runs/sft/export", "merged", "--input", "held.jsonl", "--task", "sft",
                "--report", "cmp", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = json.loads((tmp_path / "cmp.json").read_text())
    rows = {r["metric"]: r for r in table["rows"]}
    base_loss, adapter_loss, merged_loss = rows["loss"]["values"]
    assert merged_loss == pytest.approx(adapter_loss, abs=1e-4)  # merged = base + adapter
    assert adapter_loss < base_loss  # the tuned model predicts the answers better
    assert "exact_match" in rows

    res = raylm("predict", "runs/sft/export", "--input", "held.jsonl", "--output", "preds.jsonl", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    preds = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and all({"id", "prompt", "completion"} <= set(p) for p in preds)
    assert preds[0]["prompt"].startswith("What is")
