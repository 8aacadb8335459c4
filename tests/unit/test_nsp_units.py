"""NSP without Ray: sentence splitting, the pair writer of `raylm prepare` (windows, 50/50 labels,
never a document paired with itself, determinism, shards), the batches and metrics of
BertForPreTraining training, and the pair reader of `raylm predict`."""

from __future__ import annotations

import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raylm.config import validate
from raylm.datasets.config import DataConfig
from raylm.errors import UserError
from raylm.tasks.meta import ModelMeta
from raylm.tasks.nsp_data import PairWriter, split_sentences, window_seed
from raylm.tasks.nsp_pairs import IS_NEXT, IS_RANDOM

from testkit import tiny_config

CLS, SEP, PAD, MASK = 2, 3, 0, 4


def test_sentences_are_lines_in_text_files_and_cut_at_sentence_ends_otherwise():
    text = "#A#: Hi, Mr. Smith. I'm Dr. Hawkins! Why?\n\n  \n#B#: J. Smith sent me. ok. 3 days ago."
    assert split_sentences(text, lines_only=True) == ["#A#: Hi, Mr. Smith. I'm Dr. Hawkins! Why?",
                                                      "#B#: J. Smith sent me. ok. 3 days ago."]
    assert split_sentences(text, lines_only=False) == ["#A#: Hi, Mr. Smith.", "I'm Dr. Hawkins!", "Why?",
                                                       "#B#: J. Smith sent me. ok.", "3 days ago."]


def corpus(n_docs: int, seed: int) -> list[list[list[int]]]:
    """Token (d+1)*1000 + s*10 + k: document and sentence readable from the id; every 7th document
    has one sentence only."""
    rng = random.Random(seed)
    return [[[(d + 1) * 1000 + s * 10 + k for k in range(rng.randint(2, 6))] for s in range(1 if d % 7 == 6 else 8)]
            for d in range(n_docs)]


def write_pairs(tmp_path, docs, seed: int = 0, window: int = 10, name: str = "out") -> tuple[dict, list[dict]]:
    cfg = DataConfig(block_size=24, shard_rows=50, nsp=True, nsp_window_docs=window, seed=seed)
    w = PairWriter(str(tmp_path / name), "train", "u1", cfg, CLS, SEP)
    for k in range(0, len(docs), 13):  # arrives in batches, as from the tokenizer
        w.add(docs[k:k + 13], ["x"] * len(docs[k:k + 13]))
    out = w.close()
    rows = [r for f in out["files"] for r in pq.read_table(tmp_path / name / f["path"]).to_pylist()]
    return out, rows


def test_pair_writer_half_random_never_the_same_document_and_random_b_from_its_window(tmp_path):
    docs = corpus(295, 0)
    out, rows = write_pairs(tmp_path, docs)
    assert out["rows"] == len(rows) > 500 and [f["rows"] for f in out["files"]][:-1] == [50] * (len(out["files"]) - 1)
    assert out["nsp_labels"]["is_next"] + out["nsp_labels"]["random"] == len(rows)
    assert 0.42 < out["nsp_labels"]["random"] / len(rows) < 0.58
    assert len({r["sample_id"] for r in rows}) == len(rows)
    # 295 documents in windows of 10: windows of 10 documents, the last holds the other 5 with the 10 before it
    windows = [set(range(k, k + 10)) for k in range(0, 280, 10)] + [set(range(280, 295))]
    for r in rows:
        ids = r["input_ids"]
        sep = ids.index(SEP)
        a, b = ids[1:sep], ids[sep + 1:-1]
        assert ids[0] == CLS and ids[-1] == SEP and len(ids) <= 24
        assert r["token_type_ids"] == [0] * (sep + 1) + [1] * (len(b) + 1)
        doc_a, doc_b = {t // 1000 - 1 for t in a}, {t // 1000 - 1 for t in b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        assert any(doc_a | doc_b <= win for win in windows)  # B from A's window
        if r["next_sentence_label"] == IS_NEXT:
            assert doc_a == doc_b and max(t % 1000 // 10 for t in a) < min(t % 1000 // 10 for t in b)
        else:
            assert r["next_sentence_label"] == IS_RANDOM and doc_a != doc_b
    # documents of one sentence start no pair: their tokens are counted as dropped
    assert out["dropped"] == sum(len(s) for d in docs if len(d) == 1 for s in d)
    assert not {t // 1000 - 1 for r in rows for t in r["input_ids"][1:r["input_ids"].index(SEP)]} & {6, 13, 20}


def test_pair_writer_is_deterministic_for_a_seed(tmp_path):
    docs = corpus(30, 1)
    first, again, other = (write_pairs(tmp_path, docs, seed=s, name=n)[0] for s, n in ((0, "a"), (0, "b"), (1, "c")))
    assert [f["sha256"] for f in first["files"]] == [f["sha256"] for f in again["files"]]
    assert [f["sha256"] for f in first["files"]] != [f["sha256"] for f in other["files"]]
    assert window_seed(0, "u1", "train", 0) == window_seed(0, "u1", "train", 0) != window_seed(0, "u1", "train", 1)


def test_a_window_of_one_document_makes_no_pair(tmp_path):
    out, rows = write_pairs(tmp_path, corpus(1, 0))
    assert rows == [] and out["rows"] == 0 and out["docs"] == 1 and out["dropped"] == out["tokens_in"] > 0


# ---------------------------------------------------------------- training side


def meta() -> ModelMeta:
    return ModelMeta(vocab_size=60, pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, eos_id=None, block_size=16,
                     max_length=128, extra={"nsp": True})


def raw_batch(n: int = 6, seed: int = 0) -> dict:
    rng, ids, types = np.random.default_rng(seed), [], []
    for _ in range(n):
        a, b = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        ids.append(np.array([CLS, *rng.integers(10, 60, a), SEP, *rng.integers(10, 60, b), SEP], np.int32))
        types.append(np.array([0] * (a + 2) + [1] * (b + 1), np.int8))
    col = np.empty(n, dtype=object)
    col[:] = ids
    tcol = np.empty(n, dtype=object)
    tcol[:] = types
    return {"input_ids": col, "token_type_ids": tcol, "next_sentence_label": np.arange(n) % 2,
            "sample_id": np.arange(n, dtype=np.int64)}


def test_collate_pads_masks_only_real_tokens_and_keeps_a_target(tmp_path):
    from raylm.tasks.nsp import collate

    raw = raw_batch()
    out = collate(raw, meta(), step_seed=3, prob=0.5)
    lengths = [len(r) for r in raw["input_ids"]]
    assert out["input_ids"].shape == (6, max(lengths)) == out["token_type_ids"].shape
    assert out["attention_mask"].sum(1).tolist() == lengths
    targets = out["labels"].ne(-100)
    original = torch.zeros_like(out["input_ids"])
    for i, r in enumerate(raw["input_ids"]):
        original[i, :len(r)] = torch.as_tensor(r)
        assert out["token_type_ids"][i, :len(r)].tolist() == raw["token_type_ids"][i].tolist()
    assert targets.any() and not (targets & (original.eq(CLS) | original.eq(SEP) | out["attention_mask"].eq(0))).any()
    assert out["labels"][targets].equal(original[targets])
    assert out["next_sentence_label"].tolist() == [0, 1, 0, 1, 0, 1]
    assert collate(raw, meta(), step_seed=3, prob=0.5)["input_ids"].equal(out["input_ids"])  # seeded
    none = collate(raw, meta(), step_seed=3, prob=0.0)  # no target drawn: one is forced (no NaN loss)
    assert none["labels"].ne(-100).sum() == 1


def test_masked_lm_on_pair_shards_trains_bert_for_pretraining_and_reports_nsp_accuracy(tmp_path):
    from transformers import BertForPreTraining

    from raylm.tasks.registry import get_task
    from raylm.trainers.step import to_batch

    cfg = tiny_config(str(tmp_path), str(tmp_path), task="masked-lm", overrides=["data.nsp=true"])
    task = get_task("masked-lm")
    assert task.check_config(cfg) == []
    torch.manual_seed(0)
    model = task.build_model(cfg, meta())
    assert isinstance(model, BertForPreTraining) and model.config.max_position_embeddings == 16
    inputs = task.collate(raw_batch(), meta(), 0)
    loss = task.loss(model, inputs)
    assert torch.isfinite(loss) and loss.item() > 0
    batches = [to_batch(task.collate(raw_batch(seed=s), meta(), s), torch.device("cpu")) for s in range(3)]
    res = task.evaluate(model, batches, torch.device("cpu"), None, meta())
    assert set(res) == {"val_loss", "val_ppl", "val_nsp_accuracy", "val_nsp_loss", "val_pairs"}
    assert res["val_pairs"] == 18 and 0.0 <= res["val_nsp_accuracy"] <= 1.0 and res["val_loss"] > 0
    probe = task.collate(task.fake_raw_batch(meta(), 3, 16), meta(), 0)  # batch_size=auto's probe batch
    assert probe["input_ids"].shape == (3, 16) and torch.isfinite(task.loss(model, probe))
    with torch.no_grad():  # the accuracy is the NSP head's, over all the batches
        right = sum(int(model(**{k: b.inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
                        .seq_relationship_logits.argmax(-1).eq(b.inputs["next_sentence_label"]).sum()) for b in batches)
    assert res["val_nsp_accuracy"] == pytest.approx(right / 18)


def test_a_checkpoint_of_bert_for_pretraining_loads_back_for_a_resume(tmp_path):
    """The hf checkpoint stores the tied decoder once (its weight is the word embeddings)."""
    from raylm.tasks.nsp import build_model
    from raylm.trainers.state import load_model_weights

    cfg = tiny_config(str(tmp_path), str(tmp_path), task="masked-lm", overrides=["data.nsp=true"])
    saved, fresh = build_model(cfg, meta()), build_model(cfg, meta())
    saved.save_pretrained(tmp_path / "model", safe_serialization=True)
    load_model_weights(fresh, str(tmp_path / "model"))
    assert all(a.equal(b) for a, b in zip(saved.state_dict().values(), fresh.state_dict().values()))
    assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight


def test_nsp_needs_a_bert_model_and_ranks_checkpoints_by_nsp_accuracy_upwards():
    from raylm.tasks.objectives import best_checkpoint_rule
    from raylm.tasks.registry import get_task

    cfg = validate({"data": {"nsp": True}, "model": {"arch": "roberta"}, "trainer": {"task": "masked-lm"}})
    assert "set model.arch to bert" in get_task("masked-lm").check_config(cfg)[0]
    cfg = validate({"data": {"nsp": True}, "model": {"arch": "bert"},
                    "trainer": {"task": "masked-lm", "eval": {"best_metric": "val_nsp_accuracy"}}})
    assert get_task("masked-lm").check_config(cfg) == []
    assert best_checkpoint_rule(cfg) == ("val_nsp_accuracy", "max")


def test_predict_reads_pairs_and_names_the_bad_line(tmp_path):
    from raylm.tasks.nsp_files import read_pairs

    good = tmp_path / "pairs.jsonl"
    good.write_text('{"id": "x", "a": "one", "b": "two"}\n\n{"sentence1": "three", "sentence2": "four"}\n')
    rows = list(read_pairs(str(good)))
    assert [(r["id"], r["a"], r["b"]) for r in rows] == [("x", "one", "two"), (f"{good}:3", "three", "four")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": "one", "b": "two"}\n{"a": "one"}\n')
    with pytest.raises(UserError, match=rf"{bad}:2: expected an object with two non-empty texts"):
        list(read_pairs(str(bad)))
    bad.write_text('{"a": "one", "b": "two"\n')
    with pytest.raises(UserError, match=rf"{bad}:1: malformed JSON"):
        list(read_pairs(str(bad)))


def test_prepare_summary_counts_the_pairs_of_each_kind(capsys):
    from raylm.datasets.report import print_manifest

    split = {"rows": 10, "tokens_out": 200, "files": [{}], "docs": 4, "dropped": 7}
    print_manifest({"task": "masked-lm", "nsp": True, "rows_in": 5, "rows_kept": 4, "rows_rejected": 1,
                    "rejected": {"nul_byte": 1}, "splits": {"train": split},
                    "nsp_labels": {"train": {"is_next": 6, "random": 4}}}, "p")
    out = capsys.readouterr().out
    assert "train: 10 rows, 200 tokens in 1 shards (4 documents, 7 tokens of documents that start no pair" in out
    assert "; pairs: 6 is-next + 4 random" in out


def test_documents_without_a_pair_are_a_user_error_that_says_why():
    from raylm.tasks.nsp_data import _check_pairs

    cfg = DataConfig(source="lines.txt", nsp=True, text_split="line")
    split = {"docs": 40, "rows": 0}
    with pytest.raises(UserError, match="no sentence pair in 'lines.txt': 40 documents kept"):
        _check_pairs(cfg, [{"splits": {"train": split, "validation": {"docs": 0, "rows": 0}}}])
    _check_pairs(cfg, [{"splits": {"train": {"docs": 40, "rows": 3}, "validation": {"docs": 0, "rows": 0}}}])
