"""Downstream tasks without Ray: collate, the task evaluation, predict/eval on a tiny saved model,
config checks and the on_error rule of the task readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raylm.config import validate
from raylm.datasets.config import DataConfig
from raylm.datasets.labelled import Featurizer, read_rows
from raylm.datasets.sources import BadRowError
from raylm.datasets.tokenizers import train_wordpiece
from raylm.errors import UserError
from raylm.tasks.conll import NerFormat, ner_features
from raylm.tasks.downstream import (
    QuestionAnswering,
    TokenClassification,
    _side,
    _unside,
)
from raylm.tasks.meta import ModelMeta
from raylm.trainers.step import to_batch

pytestmark = pytest.mark.unit

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTS = [(["alice", "met", "bob", "in", "new", "york"], ["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC"]),
         (["carol", "visited", "paris"], ["B-PER", "O", "B-LOC"])]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tok") / "tokenizer")
    texts = [" ".join(w) for w, _ in SENTS] * 3 + ["who visited paris ? carol did , in the spring ."]
    train_wordpiece(iter(texts), d, vocab_size=120, min_frequency=1)
    return d


def _cfg(task: str, **model) -> object:
    return validate({"model": {"arch": "bert", "n_layer": 2, "n_embd": 32, "n_head": 2, **model},
                     "trainer": {"task": task}})


def test_wordpiece_tokenizer_has_bert_specials(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = tok("alice met bob").input_ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.pad_token_id == 0


def test_ner_collate_pads_per_batch_with_ignored_labels():
    batch = {"input_ids": np.array([np.array([2, 5, 6, 3]), np.array([2, 7, 3])], dtype=object),
             "labels": np.array([np.array([-100, 1, 0, -100]), np.array([-100, 3, -100])], dtype=object),
             "sample_id": np.array([10, 11])}
    out = TokenClassification().collate(batch, ModelMeta(pad_id=0), 0)
    assert out["input_ids"].tolist() == [[2, 5, 6, 3], [2, 7, 3, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert out["labels"].tolist() == [[-100, 1, 0, -100], [-100, 3, -100, -100]]
    assert int(out["_n"]) == 3


def test_ner_model_from_config_and_its_evaluation_scores_entities(tok_dir):
    from tokenizers import Tokenizer

    task, tok = TokenClassification(), Tokenizer.from_file(f"{tok_dir}/tokenizer.json")
    meta = ModelMeta(vocab_size=tok.get_vocab_size(), pad_id=0, max_length=32, extra={"labels": LABELS})
    torch.manual_seed(0)
    model = task.build_model(_cfg("token-classification"), meta)
    assert model.config.num_labels == 5 and model.config.id2label[3] == "B-LOC"
    feats = [f for w, t in SENTS for f in ner_features(tok, {"tokens": w, "tags": t}, {x: i for i, x in enumerate(LABELS)}, 32, 0)]
    raw = {"input_ids": np.array([np.array(f["input_ids"]) for f in feats], dtype=object),
           "labels": np.array([np.array(f["labels"]) for f in feats], dtype=object), "sample_id": np.arange(2)}
    batch = to_batch(task.collate(raw, meta, 0), torch.device("cpu"))
    assert batch.n == 9  # one target per word
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):  # memorise two sentences: F1 reaches 1
        model.train()
        loss = task.loss(model, batch.inputs)
        loss.backward()
        opt.step()
        opt.zero_grad()
    m = task.evaluate(model, [batch], torch.device("cpu"), None, meta)
    assert m["val_f1"] == pytest.approx(1.0) and m["val_precision"] == pytest.approx(1.0) and m["val_loss"] < 0.5


def test_qa_collate_carries_what_decoding_needs():
    batch = {"input_ids": np.array([np.array([2, 5, 3, 6, 7, 3]), np.array([2, 5, 3, 8, 3])], dtype=object),
             "token_type_ids": np.array([np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1])], dtype=object),
             "start_positions": np.array([3, 0]), "end_positions": np.array([4, 0]), "sample_id": np.array([1, 2]),
             "offset_start": np.array([np.array([-1, -1, -1, 0, 4, -1]), np.array([-1, -1, -1, 0, -1])], dtype=object),
             "offset_end": np.array([np.array([-1, -1, -1, 3, 9, -1]), np.array([-1, -1, -1, 5, -1])], dtype=object),
             "context": np.array(["big dog", "héllo"]), "example_id": np.array(["q1", "q2"]),
             "answers": np.array([np.array(["big dog", "dog"]), np.array(["héllo"])], dtype=object)}
    out = QuestionAnswering().collate(batch, ModelMeta(pad_id=0), 0)
    assert out["token_type_ids"].tolist()[1] == [0, 0, 0, 1, 1, 0]
    assert out["_offsets"][0, 4].tolist() == [4, 9] and out["_offsets"][1, 5].tolist() == [-1, -1]
    assert _unside(out["_text"][1]) == ("héllo", "q2", ["héllo"])
    assert _unside(torch.tensor(list(_side("a b", "7", [])) + [0, 0], dtype=torch.uint8)) == ("a b", "7", [])


def test_encoder_tasks_refuse_a_decoder_arch_before_any_worker_starts():
    from raylm.trainers.driver import check_compatible

    cfg = validate({"model": {"arch": "gpt2"}, "trainer": {"task": "token-classification"}})
    with pytest.raises(UserError, match="model.arch to bert or roberta"):
        check_compatible(cfg, {"task": "token-classification", "block_size": 128})


def test_tune_and_best_checkpoint_default_to_the_task_metric():
    from raylm.tasks.objectives import best_checkpoint_rule

    for task in ("token-classification", "question-answering"):
        cfg = validate({"trainer": {"task": task}, "tuning": {"name": "s"}})
        assert (cfg.tuning.metric, cfg.tuning.mode) == ("val_f1", "max")
        assert best_checkpoint_rule(cfg) == ("val_f1", "max")
    cfg = validate({"trainer": {"task": "token-classification"}, "tuning": {"metric": "val_loss", "mode": "min"}})
    assert (cfg.tuning.metric, cfg.tuning.mode) == ("val_loss", "min")
    assert validate({"tuning": {"name": "s"}}).tuning.metric == "val_loss"  # causal-lm


def test_task_readers_skip_into_the_ledger_or_fail_with_file_and_line(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("alice NNP I-PER\nmet VBD O\n\nbob NNP\n\nparis NNP I-LOC\n")
    rows = list(read_rows(str(path), NerFormat(), DataConfig()))
    assert [r["reject"] for r in rows] == ["", "wrong_columns", ""] and rows[1]["row_id"] == f"{path}:4"
    with pytest.raises(BadRowError, match=rf"{path}:4: expected 3 columns"):
        list(read_rows(str(path), NerFormat(), DataConfig(on_error="fail")))
    jl = tmp_path / "a.jsonl"
    jl.write_text(json.dumps({"words": ["a"], "ner": ["O"]}) + "\n" + json.dumps({"words": ["b"]}) + "\n")
    cfg = DataConfig(ner={"tokens_field": "words", "tags_field": "ner"})
    assert [r["reject"] for r in read_rows(str(jl), NerFormat(), cfg)] == ["", "missing_field"]


def test_featurizer_skips_rejected_rows(tok_dir):
    import pyarrow as pa


    long = (SENTS[0][0] + SENTS[1][0], SENTS[0][1] + SENTS[1][1])  # 9 words: more than one window of 8
    rows = [{"source": "f", "row_id": f"f:{i}", "reject": r, "split": "train", "tokens": w, "tags": t}
            for i, ((w, t), r) in enumerate(zip([long, SENTS[1]], ["", "bad_tag"]))]
    out = Featurizer(NerFormat(), DataConfig(max_length=8), tok_dir, {t: i for i, t in enumerate(LABELS)})(
        pa.Table.from_pylist(rows, schema=NerFormat().row_schema))
    assert set(out.column("row_id").to_pylist()) == {"f:0"} and out.num_rows >= 2  # windows of 8 sub-tokens
    assert all(len(x) <= 8 for x in out.column("input_ids").to_pylist())


def test_predict_and_eval_files_on_a_saved_token_classifier(tok_dir, tmp_path):
    from transformers import AutoTokenizer

    from raylm.serving.dispatch import evaluate_file, predict_file
    from raylm.tasks.registry import task_of_export as task_of

    tok = AutoTokenizer.from_pretrained(tok_dir)
    meta = ModelMeta(vocab_size=len(tok), pad_id=0, max_length=32, extra={"labels": LABELS})
    model_dir = str(tmp_path / "m")
    TokenClassification().build_model(_cfg("token-classification"), meta).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    assert task_of(model_dir) == "token-classification"
    conll = tmp_path / "dev.conll"
    conll.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(*s)) for s in SENTS) + "\n")
    res = evaluate_file(model_dir, str(conll))
    assert res["examples"] == 2 and 0 <= res["f1"] <= 1 and res["rejected"] == 0
    bad = tmp_path / "bad.conll"
    bad.write_text("alice B-PER\nvisited O extra\n")  # line 2 has three columns: the file is refused (exit 2)
    with pytest.raises(UserError, match=f"{bad}:2: wrong columns"):
        evaluate_file(model_dir, str(bad))
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "s1", "text": "alice visited new york"}) + "\n")
    predict_file(model_dir, str(src), str(tmp_path / "out.jsonl"))
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["id"] == "s1" and len(row["tags"]) == 4 and set(row["tags"]) <= set(LABELS)
    with pytest.raises(UserError, match="no config.json"):
        task_of(str(tmp_path))


def test_predict_answers_are_spans_of_the_context(tok_dir, tmp_path):
    from transformers import AutoTokenizer

    from raylm.serving.dispatch import evaluate_file, predict_file

    tok = AutoTokenizer.from_pretrained(tok_dir)
    model_dir = str(tmp_path / "qa")
    QuestionAnswering().build_model(_cfg("question-answering"), ModelMeta(vocab_size=len(tok), pad_id=0,
                                                                          max_length=32)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    ctx = "carol visited paris in the spring ."
    src = tmp_path / "q.jsonl"
    src.write_text(json.dumps({"id": "q1", "question": "who visited paris ?", "context": ctx,
                               "answers": {"text": ["carol"], "answer_start": [0]}}) + "\n")
    predict_file(model_dir, str(src), str(tmp_path / "a.jsonl"))
    ans = json.loads((tmp_path / "a.jsonl").read_text())
    assert ans["id"] == "q1" and ctx[ans["start"]:ans["end"]] == ans["answer"] and ans["answer"]
    res = evaluate_file(model_dir, str(src))
    assert res["examples"] == 1 and {"exact_match", "f1"} <= set(res)


def test_the_batch_size_probe_batch_feeds_collate_and_loss():
    for task in (TokenClassification(), QuestionAnswering()):
        meta = ModelMeta(vocab_size=40, pad_id=0, max_length=16, extra={"labels": LABELS})
        model = task.build_model(_cfg(task.name), meta)
        inputs = task.collate(task.fake_raw_batch(meta, 3, 16), meta, 0)
        assert inputs["input_ids"].shape == (3, 16)
        assert torch.isfinite(task.loss(model, inputs))
