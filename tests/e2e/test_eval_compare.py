"""`raylm eval A B C --input FILE` (issue 29): several exports scored on one file, one table with each
metric per model and its delta to the first, written as JSON and Markdown. Real tiny GPT-2s saved with a
tokenizer trained here (as tests/e2e/test_eval_predict_files.py makes them): the same weights under two
directories (delta 0) and a model of other weights (a delta); a classifier beside them is refused."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from raylm.cli import app
from raylm.datasets.tokenizers import train_bpe

WORDS = "the cat sat on a mat and the dog ran to the red house by the river".split()
TEXTS = [" ".join(WORDS[i % 7: i % 7 + 6]) + "." for i in range(24)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """runs/a/export and runs/b/export (the same GPT-2), other (another seed), cls (a BERT classifier)."""
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("exports")
    tok = train_bpe((t for t in TEXTS * 5), root / "tok", vocab_size=300, min_frequency=1)

    def gpt(seed: int) -> GPT2LMHeadModel:
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                          eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))

    base = gpt(0)
    cls = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64,
                                                   max_position_embeddings=64, num_labels=2))
    for path, model in ((root / "runs/a/export", base), (root / "runs/b/export", base), (root / "other", gpt(1)),
                        (root / "cls", cls)):
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return root


def test_three_models_one_table_with_deltas_to_the_first_written_as_json_and_markdown(exports, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("\n\n".join(TEXTS[:4]) + "\n")
    a, b, other = exports / "runs/a/export", exports / "runs/b/export", exports / "other"
    res = CliRunner().invoke(app, ["eval", str(a), str(b), str(other), "--input", str(text),
                                   "--report", str(tmp_path / "reports" / "cmp")])
    assert res.exit_code == 0, res.output

    table = json.loads((tmp_path / "reports" / "cmp.json").read_text())
    assert table["models"] == ["a/export", "b/export", "other"] and table["task"] == "causal-lm"
    rows = {r["metric"]: r for r in table["rows"]}
    loss = rows["loss"]
    assert loss["better"] == "lower" and rows["bits_per_byte"]["better"] == "lower"
    assert loss["deltas"][0] == 0 and loss["deltas"][1] == 0  # the same weights: no delta
    assert loss["deltas"][2] != 0 and loss["deltas"][2] == pytest.approx(loss["values"][2] - loss["values"][0])
    assert loss["verdicts"][2] in ("better", "worse")
    assert rows["examples"] == {"metric": "examples", "kind": "count", "values": [4, 4, 4]}

    printed = res.stdout.splitlines()
    assert printed[0] == f"task: causal-lm, input: {text}, baseline: a/export"
    assert printed[1].split() == ["metric", "better", "a/export", "b/export", "delta", "b/export", "other",
                                  "delta", "other"]
    cells = next(line for line in printed if line.startswith("loss ")).split()
    assert cells[:3] == ["loss", "lower", f"{loss['values'][0]:.4f}"]
    assert cells[3:5] == [f"{loss['values'][0]:.4f}", "+0.0000"]
    assert cells[6] == f"{loss['deltas'][2]:+.4f}"
    assert printed[-1] == f"comparison written to {tmp_path / 'reports' / 'cmp.json'} and {tmp_path / 'reports' / 'cmp.md'}"
    md = (tmp_path / "reports" / "cmp.md").read_text(encoding="utf-8")
    assert "| metric | better | a/export | b/export | delta b/export | other | delta other |" in md
    assert f"| loss | ↓ lower | {loss['values'][0]:.4f} | {loss['values'][0]:.4f} | +0.0000 |" in md


def test_models_of_different_tasks_are_refused_before_any_is_scored(exports, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text(TEXTS[0] + "\n")
    res = CliRunner().invoke(app, ["eval", str(exports / "other"), str(exports / "cls"), "--input", str(text),
                                   "--report", str(tmp_path / "cmp")])
    assert res.exit_code == 2, res.output
    assert "models of different tasks cannot be compared on one file: other (causal-lm), " \
           "cls (sequence-classification)" in res.output
    assert "[raylm] eval" not in res.output and not (tmp_path / "cmp.json").exists()
