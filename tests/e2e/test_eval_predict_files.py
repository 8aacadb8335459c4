"""`raylm eval EXPORT --input FILE` and `raylm predict` for the causal LM, the masked LM and the sequence
classifier (issue 28: every task scores a raw file), on real tiny HF models saved with a tokenizer trained
here; the metrics are held to the same numbers computed directly with transformers. Bad files exit 2 with
file:line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from raylm.cli import app
from raylm.datasets.tokenizers import train_bpe

WORDS = "the cat sat on a mat and the dog ran to the red house by the river".split()
TEXTS = [" ".join(WORDS[i % 7: i % 7 + 6]) + "." for i in range(24)]


def _tokenizer(tmp_path):
    return train_bpe((t for t in TEXTS * 5), tmp_path / "tok", vocab_size=300, min_frequency=1)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Tiny causal LM, masked LM and 2-class classifier directories, as `raylm train` exports them."""
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    root = tmp_path_factory.mktemp("exports")
    tok = _tokenizer(root)
    v = len(tok)
    torch.manual_seed(0)
    models = {
        "gpt": GPT2LMHeadModel(GPT2Config(vocab_size=v, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                          eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)),
        "mlm": BertForMaskedLM(BertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=64)),
        "cls": BertForSequenceClassification(BertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=64,
                                                        max_position_embeddings=64, num_labels=2)),
    }
    models["cls"].config.raylm_data = {"text_field": "sentence", "label_field": "label", "labels": None}
    for name, model in models.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _metrics(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.strip().splitlines() if ": " in line)


def test_causal_lm_scores_a_text_file_as_transformers_does_and_predicts_continuations(exports, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = tmp_path / "held_out.txt"
    text.write_text("\n\n".join(TEXTS[:3]) + "\n")  # three documents (blank-line separated)
    res = _run("eval", str(exports / "gpt"), "--input", str(text))
    assert res.exit_code == 0, res.output
    got = _metrics(res.output)
    tok, model = AutoTokenizer.from_pretrained(exports / "gpt"), AutoModelForCausalLM.from_pretrained(exports / "gpt")
    ids = [i for t in TEXTS[:3] for i in [*tok(t, add_special_tokens=False).input_ids, tok.eos_token_id]]
    assert len(ids) <= 32  # one block
    x = torch.tensor([ids])
    with torch.no_grad():
        loss = model(input_ids=x, labels=x).loss.item()
    printed = {"abs": 6e-5}  # the command prints 4 decimals
    assert float(got["loss"]) == pytest.approx(loss, **printed) and int(got["examples"]) == 3
    chars = sum(len(t) for t in TEXTS[:3])
    assert float(got["nats_per_char"]) == pytest.approx(loss * (len(ids) - 1) / chars, **printed)
    assert float(got["bits_per_byte"]) == pytest.approx(loss * (len(ids) - 1) / math.log(2) / chars, **printed)

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"text": t}) for t in ("the cat", "a dog")) + "\n")
    out = tmp_path / "out.jsonl"
    res = _run("predict", str(exports / "gpt"), "--input", str(prompts), "--output", str(out))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["the cat", "a dog"] and all(isinstance(r["completion"], str) for r in rows)
    assert rows[0]["id"].endswith("prompts.jsonl:1")


def test_masked_lm_scores_a_file_and_fills_mask_tokens(exports, tmp_path):
    text = tmp_path / "docs.jsonl"
    text.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS) + "\n")
    res = _run("eval", str(exports / "mlm"), "--input", str(text))
    assert res.exit_code == 0, res.output
    got = _metrics(res.output)
    assert int(got["tokens"]) > 0 and float(got["perplexity"]) == pytest.approx(math.exp(float(got["loss"])), rel=1e-3)
    again = _metrics(_run("eval", str(exports / "mlm"), "--input", str(text)).output)
    assert again["loss"] == got["loss"]  # seeded masking: the same score twice

    masked = tmp_path / "masked.txt"
    masked.write_text("the cat <mask> on a mat.\n")
    out = tmp_path / "fills.jsonl"
    res = _run("predict", str(exports / "mlm"), "--input", str(masked), "--output", str(out))
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(row["masks"]) == 1 and len(row["masks"][0]) == 5
    assert sum(c["prob"] for c in row["masks"][0]) <= 1.0


def test_sequence_classifier_scores_a_tsv_and_predicts_labels_with_probabilities(exports, tmp_path):
    from transformers import AutoModelForSequenceClassification

    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(TEXTS[:10])))
    res = _run("eval", str(exports / "cls"), "--input", str(tsv))
    assert res.exit_code == 0, res.output
    got = _metrics(res.output)
    out = tmp_path / "labels.jsonl"
    res = _run("predict", str(exports / "cls"), "--input", str(tsv), "--output", str(out))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and all(sum(r["probs"]) == pytest.approx(1.0, abs=1e-4) for r in rows)
    # The accuracy eval reports is the share of predict's labels that match the column.
    accuracy = sum(r["label_id"] == i % 2 for i, r in enumerate(rows)) / 10
    assert float(got["accuracy"]) == pytest.approx(accuracy) and int(got["examples"]) == 10
    model = AutoModelForSequenceClassification.from_pretrained(exports / "cls")
    assert {r["label"] for r in rows} <= {model.config.id2label[0], model.config.id2label[1]}


@pytest.mark.parametrize("name,content,export,says", [
    ("bad.jsonl", '{"text": "fine"}\n{"text": \n', "gpt", "{path}:2: malformed JSON"),
    ("no_label.tsv", "sentence\tscore\nthe cat\t1\n", "cls", "no column 'label'"),
    ("bad_label.tsv", "sentence\tlabel\nthe cat\t7\n", "cls", "{path}:2: label '7'"),
    ("empty.txt", "", "gpt", "no row to score"),
])
def test_bad_files_exit_2_with_the_file_and_line(exports, tmp_path, name, content, export, says):
    path = tmp_path / name
    path.write_text(content)
    res = _run("eval", str(exports / export), "--input", str(path))
    assert res.exit_code == 2 and says.format(path=path) in res.output, res.output
    assert "Traceback" not in res.output


def test_generate_asks_the_exports_task(exports):
    """`raylm generate` goes to the export's task: a causal LM continues the prompt; a classifier says it does not
    generate (exit 2, one line)."""
    res = _run("generate", str(exports / "gpt"), "--prompt", "the cat", "--max-new-tokens", "5", "--seed", "1")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("the cat")
    assert _run("generate", str(exports / "gpt"), "--prompt", "the cat", "--max-new-tokens", "5",
                "--seed", "1").output == res.output  # seeded
    res = _run("generate", str(exports / "cls"), "--prompt", "the cat")
    assert res.exit_code == 2 and "does not generate text" in res.output
