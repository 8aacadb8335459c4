"""Downstream tasks end to end on a real local Ray: raw labelled files the test writes -> prepare
(Ray Data, actor pool) -> train (2 workers, tiny BERT from config, 6 steps) -> export -> `raylm eval
--input` and `raylm predict` on the exported model; bad rows in the ledger (skip) or exit 2 (fail)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raylm.config import validate
from raylm.errors import UserError

pytestmark = pytest.mark.ray

PER, LOC, ORG = ["alice", "bob", "carol", "dave"], [["paris"], ["new", "york"], ["rome"]], ["acme", "globex"]
FILLER = ["the", "met", "in", "at", "visited", "from", "works", "for", "and", "today"]


def ner_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Learnable sentences, tags in IOB1 as CoNLL-2003 writes them (I- opens an entity)."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        sent = []
        for _ in range(rng.randint(2, 4)):
            kind = rng.choice(["PER", "LOC", "ORG", "O"])
            words = {"PER": lambda: [rng.choice(PER)], "LOC": lambda: rng.choice(LOC), "ORG": lambda: [rng.choice(ORG)],
                     "O": lambda: [rng.choice(FILLER)]}[kind]()
            sent += [(w, "O" if kind == "O" else f"I-{kind}") for w in words]
            sent.append((rng.choice(FILLER), "O"))
        out.append(sent)
    return out


def write_conll(path, sentences, bad_line: bool = False) -> tuple[str, int]:
    """A CoNLL-2003-style file (word POS chunk tag); with `bad_line`, one token line lacks a column.
    Returns the path and the bad line's number (0: none)."""
    lines, bad = ["-DOCSTART- -X- O O", ""], 0
    for k, sent in enumerate(sentences):
        for w, t in sent:
            lines.append(f"{w} NN I-NP {t}")
        if bad_line and k == 3:
            lines.append("broken NN I-NP")
            bad = len(lines)
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path), bad


def raw_config(tmp_path, task: str, source: str, validation: str, **data) -> dict:
    return {
        "cluster": {"storage_path": str(tmp_path / "runs")},
        "data": {"source": source, "validation_source": validation, "prepared_dir": str(tmp_path / "prepared"),
                 "max_length": 32, "tokenizer": {"vocab_size": 300, "sample_docs": 500, "min_frequency": 1},
                 "tokenize_actors": 1, "shard_rows": 64, **data},
        "model": {"arch": "bert", "n_layer": 2, "n_embd": 32, "n_head": 2},
        "trainer": {"task": task, "run_name": "t", "batch_size": 8, "max_steps": 6, "log_every": 1,
                    "scaling": {"num_workers": 2, "max_failures": 0}, "optimizer": {"lr": 3e-3},
                    "schedule": {"warmup_steps": 0}, "eval": {"every": 3, "batches": 2}, "checkpoint": {"every": 3}},
        "tracking": {"wandb": {"mode": "disabled"}, "progress_every_s": 60},
    }


def test_token_classification_prepare_train_eval_predict(ray_session, tmp_path):
    from transformers import AutoModelForTokenClassification

    from raylm.cli import app
    from raylm.datasets.clean import read_rejects
    from raylm.datasets.prepare import load_manifest
    from raylm.tasks.registry import prepare_data
    from raylm.trainers.driver import train

    train_file, bad_line = write_conll(tmp_path / "train.conll", ner_sentences(120, 0), bad_line=True)
    val_file, _ = write_conll(tmp_path / "val.conll", ner_sentences(24, 1))
    cfg = validate(raw_config(tmp_path, "token-classification", train_file, val_file))
    summary = train(cfg)

    # ---- prepare: the tag list from the data, the bad sentence in the ledger, every row accounted for
    m = load_manifest(cfg.data.prepared_dir)
    assert m["task"] == "token-classification"
    assert m["labels"] == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]  # IOB1 read as IOB2
    assert m["rejected"] == {"wrong_columns": 1} and m["ledger_balanced"]
    assert m["rows_in"] == 144 and m["splits"]["validation"]["docs"] == 24
    assert [r["row_id"] for r in read_rejects(cfg.data.prepared_dir)] == [f"{train_file}:{bad_line}"]

    # ---- train: entity metrics on validation rank the checkpoints; the export loads as a token classifier
    metrics = summary["metrics"]
    assert metrics["step"] == 6
    assert {"val_f1", "val_precision", "val_recall", "val_accuracy", "val_loss"} <= set(metrics)
    assert 0.0 <= metrics["val_f1"] <= 1.0
    model = AutoModelForTokenClassification.from_pretrained(summary["export_dir"])
    assert model.config.id2label[5] == "B-PER" and model.config.num_hidden_layers == 2

    # ---- eval a raw labelled file, predict tags per token (the CLI as a user runs it)
    runner = CliRunner()
    res = runner.invoke(app, ["eval", summary["export_dir"], "--input", val_file])
    assert res.exit_code == 0, res.output
    assert "examples: 24" in res.output and "f1: " in res.output
    # One window per sentence and the whole dev set in the loop's evaluation (2 ranks x 2 batches x 8):
    # the exported model scores what the last checkpoint scored in training.
    f1 = next(float(line.split(": ", 1)[1]) for line in res.output.splitlines() if line.startswith("f1: "))
    assert f1 == pytest.approx(metrics["val_f1"], abs=1e-4)
    out = tmp_path / "tags.jsonl"
    res = runner.invoke(app, ["predict", summary["export_dir"], "--input", val_file, "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and all(len(r["tags"]) == len(r["tokens"]) for r in rows)
    assert {t for r in rows for t in r["tags"]} <= set(m["labels"])

    # ---- on_error: fail stops at the bad line: file:line: what
    strict = validate(raw_config(tmp_path, "token-classification", train_file, val_file, on_error="fail"))
    with pytest.raises(UserError, match=rf"{train_file}:{bad_line}: expected 4 columns"):
        prepare_data(strict.data, "token-classification")


def squad_file(path, n_paragraphs: int, seed: int, bad: bool = False) -> str:
    """SQuAD v1.1 JSON: 'NAME lives in CITY and works for ORG .' with one question per fact; with
    `bad`, one answer whose answer_start does not point at its text (a bad_answer reject)."""
    rng, paras = random.Random(seed), []
    for p in range(n_paragraphs):
        name, city, org = rng.choice(PER), " ".join(rng.choice(LOC)), rng.choice(ORG)
        ctx = f"{name} lives in {city} and works for {org} ."
        qas = [{"id": f"{seed}-{p}-{k}", "question": q, "answers": [{"text": a, "answer_start": ctx.index(a)}]}
               for k, (q, a) in enumerate([(f"where does {name} live ?", city), (f"who works for {org} ?", name)])]
        if bad and p == 2:
            qas[0]["answers"][0]["answer_start"] += 1
        paras.append({"context": ctx, "qas": qas})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}))
    return str(path)


@pytest.mark.long  # CI's 35 minutes under load; QA's spans, offsets and metrics are unit-tested (test_downstream_units)
def test_question_answering_prepare_train_eval_predict(ray_session, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from raylm.cli import app
    from raylm.datasets.prepare import load_manifest
    from raylm.trainers.driver import train

    train_file = squad_file(tmp_path / "train.json", 60, 0, bad=True)
    val_file = squad_file(tmp_path / "dev.json", 10, 1)
    cfg = validate(raw_config(tmp_path, "question-answering", train_file, val_file, qa={"doc_stride": 8}))
    summary = train(cfg)

    m = load_manifest(cfg.data.prepared_dir)
    assert m["rejected"] == {"bad_answer": 1} and m["ledger_balanced"] and m["rows_in"] == 140
    assert m["splits"]["validation"]["docs"] == 20
    metrics = summary["metrics"]
    assert metrics["step"] == 6 and {"val_exact_match", "val_f1", "val_loss"} <= set(metrics)
    assert AutoModelForQuestionAnswering.from_pretrained(summary["export_dir"]).config.num_hidden_layers == 2

    runner = CliRunner()
    res = runner.invoke(app, ["eval", summary["export_dir"], "--input", val_file])
    assert res.exit_code == 0, res.output
    assert "examples: 20" in res.output and "exact_match: " in res.output
    out = tmp_path / "answers.jsonl"
    res = runner.invoke(app, ["predict", summary["export_dir"], "--input", val_file, "--output", str(out)])
    assert res.exit_code == 0, res.output
    contexts = {qa["id"]: p["context"] for p in json.loads(Path(val_file).read_text())["data"][0]["paragraphs"]
                for qa in p["qas"]}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and all(contexts[r["id"]][r["start"]:r["end"]] == r["answer"] for r in rows)


@pytest.mark.long
@pytest.mark.timeout(900)
def test_tune_sweeps_ner_on_entity_f1(ray_session, tmp_path):
    """A 2-trial grid over lr on NER: with no tuning.metric the sweep maximises the task's val_f1."""
    from transformers import AutoModelForTokenClassification

    from raylm.tuning.results import COMPLETED
    from raylm.tuning.sweep import run_sweep

    train_file, _ = write_conll(tmp_path / "train.conll", ner_sentences(80, 0))
    val_file, _ = write_conll(tmp_path / "val.conll", ner_sentences(16, 1))
    raw = raw_config(tmp_path, "token-classification", train_file, val_file)
    raw["trainer"].update(max_steps=4, log_every=2, eval={"every": 2, "batches": 2}, checkpoint={"every": 2})
    raw["tuning"] = {"name": "ner", "num_samples": 1, "max_concurrent_trials": 2, "scheduler": {"type": "fifo"},
                     "space": {"trainer.optimizer.lr": {"type": "grid", "values": [3e-3, 1e-6]}}}
    cfg = validate(raw)
    assert (cfg.tuning.metric, cfg.tuning.mode) == ("val_f1", "max")
    summary = run_sweep(cfg)
    assert summary.metric == "val_f1" and len(summary.rows) == 2
    assert all(r.status == COMPLETED and r.step == 4 and r.best is not None for r in summary.rows)
    best = max(summary.rows, key=lambda r: r.best)
    assert summary.best_trial == best.trial_id
    assert AutoModelForTokenClassification.from_pretrained(summary.best_model).config.num_labels == 7
