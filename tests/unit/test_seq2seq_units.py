"""seq2seq without Ray: file pairing, features, the HF shift conventions, collate, the validation hook,
predict/eval/generate on a tiny saved model, BLEU/ROUGE against hand-worked figures, config rules."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch

from raylm.config import validate
from raylm.datasets.config import DataConfig
from raylm.datasets.sources import BadRowError
from raylm.errors import UserError
from raylm.tasks.meta import ModelMeta
from raylm.tasks.metrics import bleu, rouge
from raylm.tasks.seq2seq import Seq2Seq, decode, text_scores
from raylm.tasks.seq2seq_data import encode, features, pair_files, partner, read_rows, special_ids
from raylm.trainers.step import to_batch

PAIRS = [("ein hund läuft", "a dog runs"), ("zwei katzen schlafen", "two cats sleep"),
         ("ein mann liest ein buch", "a man reads a book"), ("die frau singt", "the woman sings")]


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from raylm.tasks.seq2seq_data import train_tokenizer

    d = str(tmp_path_factory.mktemp("tok") / "tokenizer")
    train_tokenizer(iter([t for p in PAIRS for t in p] * 3), d, vocab_size=300, min_frequency=1)
    return d


def ragged(rows: list) -> np.ndarray:
    """Rows as Ray Data hands a variable-length column over: a 1-D object array of int arrays."""
    out = np.empty(len(rows), dtype=object)
    out[:] = [np.asarray(r, np.int32) for r in rows]
    return out


def _cfg(**kw):
    raw = {"model": {"arch": "bart", "n_layer": 1, "n_embd": 32, "n_head": 2},
           "data": {"seq2seq": {"max_target_length": 16}},
           "trainer": {"task": "seq2seq", "generation": {"num_beams": 2, "max_new_tokens": 6, "eval_batches": 1}}}
    for section, values in kw.items():
        raw[section] = {**raw.get(section, {}), **values}
    return validate(raw)


def _meta(tok_dir: str, **kw) -> ModelMeta:
    ids = special_ids(tok_dir)
    with open(f"{tok_dir}/tokenizer.json") as f:
        tok_json = f.read()
    return ModelMeta.from_dict({
        "vocab_size": 300, "pad_id": ids["pad_id"], "eos_id": ids["eos_id"], "bos_id": ids["bos_id"], "max_length": 32,
        "seq2seq": {"eos_id": ids["eos_id"], "max_source_length": 32, "max_target_length": 16, "source_suffix": "de",
                    "target_suffix": "en"},
        "tokenizer_json": tok_json, **kw})


# ---------------------------------------------------------------- files and rows


def test_partner_files_and_pairing(tmp_path):
    assert partner("d/train.de", "de", "en") == "d/train.en"
    assert partner("d/val.de.gz", "de", "en") == "d/val.en.gz"
    with pytest.raises(UserError, match=r"expected a '\.de' file"):
        partner("d/train.fr", "de", "en")
    for name in ("train.de", "train.en", "val.de"):
        write(tmp_path / name, "x\n")
    cfg = DataConfig(seq2seq={"source_suffix": "de", "target_suffix": "en"})
    listed = [(str(tmp_path / n), 2) for n in ("train.de", "train.en")]  # a directory lists both sides
    files, with_partners = pair_files(listed, cfg)
    assert files == [str(tmp_path / "train.de")] and [u for u, _ in with_partners] == [u for u, _ in listed]
    with pytest.raises(UserError, match=r"val\.de: its parallel file .*val\.en does not exist"):
        pair_files([(str(tmp_path / "val.de"), 2)], cfg)


def test_read_rows_parallel_and_jsonl(tmp_path):
    de = write(tmp_path / "train.de", "Ein Hund.\n\nDrei.\n")
    write(tmp_path / "train.en", "A dog.\nTwo.\n \n")
    cfg = DataConfig(seq2seq={"source_suffix": "de", "target_suffix": "en"})
    rows = list(read_rows(de, cfg, "skip"))
    assert [(r["source_text"], r["target_text"], r["reject"]) for r in rows] == [
        ("Ein Hund.", "A dog.", ""), ("", "", "empty_source"), ("Drei.", "", "empty_target")]
    with pytest.raises(BadRowError, match=rf"^{de}:2: empty source line"):
        list(read_rows(de, cfg, "fail"))
    # JSONL (gzip), fields named in the config; a record without its field names the field
    js = tmp_path / "d.jsonl.gz"
    js.write_bytes(gzip.compress(b'{"dialogue": "#P1#: hi", "gist": "hello"}\n{"dialogue": "x"}\n'))
    jcfg = DataConfig(seq2seq={"source_field": "dialogue", "target_field": "gist"})
    rows = list(read_rows(str(js), jcfg, "skip"))
    assert rows[0]["target_text"] == "hello" and rows[1]["reject"] == "missing_field"
    with pytest.raises(BadRowError, match=rf"^{js}:2: no text field 'gist' \(a string\)"):
        list(read_rows(str(js), jcfg, "fail"))
    with pytest.raises(UserError, match="seq2seq reads JSONL"):
        read_rows(de, DataConfig(), "skip")


def test_summary_reader_defaults_to_document_and_summary(tmp_path):
    path = write(tmp_path / "dev.jsonl", json.dumps({"id": "dev_0", "document": "#Person1#: Hi.\n#Person2#: Hey.",
                                                     "summary": "They greet."}) + "\n")
    (row,) = read_rows(path, DataConfig(), "fail")
    assert row["source_text"].startswith("#Person1#") and row["target_text"] == "They greet."


# ---------------------------------------------------------------- features, collate, model conventions


def test_features_end_with_eos_and_cut_long_texts(tok_dir):
    from tokenizers import Tokenizer

    tok, ids = Tokenizer.from_file(f"{tok_dir}/tokenizer.json"), special_ids(tok_dir)
    assert ids["bos_id"] is None and ids["eos_id"] is not None and ids["pad_id"] != ids["eos_id"]
    f = features(tok, {"source_text": "ein mann liest ein buch", "target_text": "a man reads a book"}, ids, 64, 64)
    body = tok.encode("a man reads a book", add_special_tokens=False).ids
    assert f["labels"] == body + [ids["eos_id"]] and f["input_ids"][-1] == ids["eos_id"]
    assert f["target_text"] == "a man reads a book"
    assert tok.decode(f["labels"], skip_special_tokens=True) == "a man reads a book"  # byte-level BPE: lossless
    cut = encode(tok, "ein mann liest ein buch " * 10, 5, 7, ids["eos_id"])
    assert len(cut) == 5 and cut[0] == 7 and cut[-1] == ids["eos_id"]  # [bos] + 3 ids + [eos]


def test_collate_pads_labels_with_ignore_and_keeps_references(tok_dir):
    task, meta = Seq2Seq(), _meta(tok_dir)
    batch = {"input_ids": np.array([np.array([5, 6, 7, 2]), np.array([8, 2])], dtype=object),
             "labels": np.array([np.array([9, 2]), np.array([10, 11, 12, 2])], dtype=object),
             "sample_id": np.array([3, 4]), "target_text": np.array(["Zwei Kätzchen", "b"], dtype=object)}
    out = task.collate(batch, meta, 0)
    assert out["input_ids"].tolist() == [[5, 6, 7, 2], [8, 2, meta.pad_id, meta.pad_id]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["labels"].tolist() == [[9, 2, -100, -100], [10, 11, 12, 2]] and int(out["_n"]) == 6
    from raylm.tasks.seq2seq import _text

    assert [_text(r) for r in out["_ref"]] == ["Zwei Kätzchen", "b"]


@pytest.mark.parametrize("arch,start", [("bart", "eos"), ("t5", "pad"), ("marian", "pad")])
def test_models_shift_labels_behind_the_decoder_start(tok_dir, arch, start):
    """The loss the model computes from labels is cross-entropy on decoder inputs [start] + labels[:-1]
    (-100 read as PAD): HF's shift, which training relies on instead of building decoder inputs itself."""
    meta = _meta(tok_dir)
    model = Seq2Seq().build_model(_cfg(model={"arch": arch}), meta).eval()
    ids = special_ids(tok_dir)
    assert model.config.decoder_start_token_id == ids[f"{start}_id"]
    assert model.generation_config.num_beams == 2 and model.generation_config.max_new_tokens == 6
    assert model.config.raylm_seq2seq["source_suffix"] == "de"
    src = torch.tensor([[20, 21, 22, ids["eos_id"]]])
    labels = torch.tensor([[30, 31, ids["eos_id"], -100]])
    dec_in = torch.tensor([[ids[f"{start}_id"], 30, 31, ids["eos_id"]]])
    with torch.no_grad():
        loss = model(input_ids=src, labels=labels).loss
        logits = model(input_ids=src, decoder_input_ids=dec_in).logits
    manual = torch.nn.functional.cross_entropy(logits[0, :3], labels[0, :3])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_evaluate_decodes_the_first_batches_and_scores_them(tok_dir):
    from tokenizers import Tokenizer

    tok, ids = Tokenizer.from_file(f"{tok_dir}/tokenizer.json"), special_ids(tok_dir)
    meta = _meta(tok_dir, generation={"eval_batches": 1})
    task = Seq2Seq()
    model = task.build_model(_cfg(), meta)
    rows = [features(tok, {"source_text": s, "target_text": t}, ids, 32, 16) for s, t in PAIRS]
    batches = []
    for i in (0, 2):
        raw = {"input_ids": ragged([r["input_ids"] for r in rows[i:i + 2]]),
               "labels": ragged([r["labels"] for r in rows[i:i + 2]]),
               "sample_id": np.array([i, i + 1]), "target_text": np.array([r["target_text"] for r in rows[i:i + 2]])}
        batches.append(to_batch(task.collate(raw, meta, 0), torch.device("cpu")))
    out = task.evaluate(model, batches, torch.device("cpu"), None, meta)
    assert out["val_decoded"] == 2.0  # the first batch only (generation.eval_batches=1); loss over both
    assert {"val_loss", "val_bleu", "val_rouge1", "val_rouge2", "val_rougeL"} <= set(out)
    assert math.isfinite(out["val_loss"]) and 0 <= out["val_bleu"] <= 100
    assert decode(tok, [[ids["eos_id"], *tok.encode("a dog", add_special_tokens=False).ids, ids["eos_id"],
                         ids["pad_id"]]]) == ["a dog"]


def test_predict_eval_generate_on_a_saved_model(tok_dir, tmp_path):
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from raylm.cli import app

    model = Seq2Seq().build_model(_cfg(), _meta(tok_dir))
    out_dir = str(tmp_path / "export")
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out_dir)
    de = write(tmp_path / "val.de", "\n".join(s for s, _ in PAIRS) + "\n")
    write(tmp_path / "val.en", "\n".join(t for _, t in PAIRS[:3]) + "\n\n")  # the last target is empty
    runner = CliRunner()
    res = runner.invoke(app, ["eval", out_dir, "--input", de])  # the model knows its suffixes: val.en is read
    assert res.exit_code == 0, res.output
    assert "examples: 3" in res.output and "rejected: 1" in res.output and "bleu: " in res.output
    js = write(tmp_path / "val.jsonl", "".join(json.dumps({"source": a, "target": b}) + "\n" for a, b in PAIRS))
    res = runner.invoke(app, ["eval", out_dir, "--input", js])  # JSONL pairs too, though trained on .de/.en
    assert res.exit_code == 0 and "examples: 4" in res.output, res.output
    bad = write(tmp_path / "bad.jsonl", json.dumps({"source": "ein hund", "target": "a dog"}) + "\n{not json\n")
    res = runner.invoke(app, ["eval", out_dir, "--input", bad])  # a line that cannot be read refuses the file
    assert res.exit_code == 2 and f"{bad}:2: malformed json" in res.output, res.output
    res = runner.invoke(app, ["predict", out_dir, "--input", de, "--output", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == [s for s, _ in PAIRS] and all(isinstance(r["prediction"], str) for r in rows)
    # More new tokens than the decoder has positions (32): cut to what the model can place, not an index error.
    res = runner.invoke(app, ["generate", out_dir, "--prompt", "ein hund", "--num-beams", "1", "--max-new-tokens", "99"])
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- metrics, hand-worked


def test_bleu_hand_worked():
    # "a b c d e" vs "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (BP 1):
    # BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25.
    got = bleu(["the cat sat on mats"], ["the cat sat on rugs"])
    assert got["bleu"] == pytest.approx(100 * 0.2 ** 0.25, abs=1e-3)
    assert [got[f"precision_{n}"] for n in (1, 2, 3, 4)] == pytest.approx([80.0, 75.0, 200 / 3, 50.0])
    # A short output: every n-gram right, brevity penalty exp(1 - 5/4).
    got = bleu(["the cat sat on"], ["the cat sat on rugs"])
    assert got["brevity_penalty"] == pytest.approx(math.exp(-0.25)) and got["bleu"] == pytest.approx(
        100 * math.exp(-0.25), abs=1e-3)
    # Corpus BLEU pools n-gram counts over sentences (not a mean of sentence scores); "a dog ran" adds
    # 3/3 unigrams, 2/2 bigrams, 1/1 trigram and no 4-gram: 7/8, 5/6, 3/4, 1/2.
    got = bleu(["the cat sat on mats", "a dog ran"], ["the cat sat on rugs", "a dog ran"])
    assert got["bleu"] == pytest.approx(100 * (7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** 0.25, abs=1e-3)


def test_rouge_hand_worked():
    # hyp "the cat on the mat" vs ref "the cat sat on the mat": unigrams 5 common, P 1, R 5/6 -> F 10/11;
    # bigrams {the cat, on the, the mat} 3 common of 4 and 5 -> F 2/3; LCS 5 -> ROUGE-L 10/11.
    got = rouge(["the cat on the mat"], ["the cat sat on the mat"])
    assert got == pytest.approx({"rouge1": 10 / 11, "rouge2": 2 / 3, "rougeL": 10 / 11})
    # Stemming (ROUGE-1.5.5 -m): "cats"/"cat", "sleeping"/"sleep" match.
    assert rouge(["cats sleeping"], ["cat sleep"])["rouge1"] == pytest.approx(1.0)
    scores = text_scores(["the cat on the mat"], ["the cat sat on the mat"])
    assert scores["rougeL"] == pytest.approx(10 / 11) and scores["decoded"] == 1.0


# ---------------------------------------------------------------- config


def test_task_metric_follows_the_data_kind():
    from raylm.tasks.objectives import best_checkpoint_rule

    assert best_checkpoint_rule(_cfg()) == ("val_bleu", "max")
    assert best_checkpoint_rule(_cfg(data={"seq2seq": {"metric": "rouge"}})) == ("val_rougeL", "max")
    off = validate({"model": {"arch": "t5"}, "trainer": {"task": "seq2seq", "generation": {"eval_batches": 0}}})
    assert best_checkpoint_rule(off) == ("val_loss", "min")
    swept = validate({"model": {"arch": "bart"}, "data": {"seq2seq": {"metric": "rouge"}},
                      "trainer": {"task": "seq2seq"},
                      "tuning": {"space": {"trainer.optimizer.lr": {"type": "grid", "values": [1e-3]}}}})
    assert (swept.tuning.metric, swept.tuning.mode) == ("val_rougeL", "max")


def test_config_checks():
    with pytest.raises(Exception, match="set both data.seq2seq.source_suffix and target_suffix"):
        validate({"data": {"seq2seq": {"source_suffix": "de"}}})
    assert Seq2Seq.check_config(validate({"model": {"arch": "gpt2"}, "trainer": {"task": "seq2seq"}}))
    assert not Seq2Seq.check_config(_cfg())


def test_warm_start_from_an_encoder_builds_bert2bert(tmp_path):
    """model.init_from an encoder (all-MiniLM-L6-v2 in the recipes; a tiny BERT here): an EncoderDecoderModel
    with that encoder on both sides, [CLS] starting the decoder and the source, [SEP] ending both."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from raylm.datasets.tokenizers import train_wordpiece
    from raylm.tasks import seq2seq
    from raylm.tasks.registry import task_of_export

    enc_dir = str(tmp_path / "encoder")
    train_wordpiece(iter([t for p in PAIRS for t in p] * 3), enc_dir, vocab_size=120, min_frequency=1)
    BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(enc_dir)
    ids = special_ids(enc_dir)
    tok = AutoTokenizer.from_pretrained(enc_dir)
    assert (ids["bos_id"], ids["eos_id"], ids["pad_id"]) == (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    meta = ModelMeta.from_dict({"vocab_size": 120, "pad_id": ids["pad_id"], "eos_id": ids["eos_id"], "bos_id": ids["bos_id"],
                                "max_length": 32, "seq2seq": {"eos_id": ids["eos_id"], "max_source_length": 32}})
    model = Seq2Seq().build_model(_cfg(model={"init_from": enc_dir}), meta)
    assert type(model).__name__ == "EncoderDecoderModel" and model.config.decoder.add_cross_attention
    assert model.config.decoder_start_token_id == tok.cls_token_id
    assert not any(p.requires_grad for p in model.encoder.pooler.parameters())  # no loss reaches it (DDP)
    f = features(Tokenizer.from_file(f"{enc_dir}/tokenizer.json"),
                 {"source_text": "ein hund", "target_text": "a dog"}, ids, 32, 16)
    assert f["input_ids"][0] == tok.cls_token_id and f["input_ids"][-1] == f["labels"][-1] == tok.sep_token_id
    loss = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss
    assert math.isfinite(loss.item())
    out_dir = str(tmp_path / "export")
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    assert task_of_export(out_dir) == "seq2seq"
    assert isinstance(seq2seq.generate_text(out_dir, "ein hund", num_beams=2, max_new_tokens=4), str)


def test_preflight_finds_a_missing_partner_and_non_jsonl_files(tmp_path):
    from raylm.preflight import preflight

    de = write(tmp_path / "train.de", "ein hund\n")
    raw = {"data": {"source": de, "seq2seq": {"source_suffix": "de", "target_suffix": "en"}},
           "model": {"arch": "bart"}, "trainer": {"task": "seq2seq"}}
    with pytest.raises(UserError, match=r"train\.de: its parallel file .*train\.en does not exist"):
        preflight(validate(raw), "prepare")
    write(tmp_path / "train.en", "a dog\n")
    preflight(validate(raw), "prepare")
    raw["data"]["seq2seq"] = {}
    with pytest.raises(UserError, match=r"train\.de: seq2seq reads JSONL"):
        preflight(validate(raw), "train")
