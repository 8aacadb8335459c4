"""What `UnitWorker` writes for a small mixed corpus is pinned: token ids, labels, sample ids, counts
by reason, the rejects ledger, notes and dedup claims. The digests below were taken with the
per-row worker before issue 15's speed work; a faster worker must write the same shards.

Units run here in-process, in order, against one local dedup index (no Ray). Paths are replaced
by `<corpus>` so the digest does not depend on where pytest puts its temporary files; sample ids
do (they hash the shard name), so they are checked against `pack.sample_id` instead.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.datasets.clean import DedupIndex, text_hash, text_hashes
from raylm.datasets.config import DataConfig
from raylm.datasets.pack import sample_id, sample_ids, split_of, splits_of
from raylm.datasets.prepare import PROGRESS, UnitWorker
from raylm.datasets.sources import plan_units
from raylm.datasets.units import UnitTask

pytestmark = pytest.mark.unit
WORDS = ("the a of and to in is was it that he she they we you not but with for on as at by this "
         "king queen sword night day love death good bad film plot great dull").split()
LM_DIGEST = "69f9cda7c23e89790c28c96af1309fff"
CLS_DIGEST = "6d28423e220aea23579ecf08bd1c1377"


class LocalDedup:
    """`ShardedDedup` without actors."""

    def __init__(self) -> None:
        self.index = DedupIndex()

    def claim(self, hashes: np.ndarray, owner: int) -> np.ndarray:
        return self.index.claim(hashes, owner)


def _tokenizer(out: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<pad>", "<unk>", "<mask>", *WORDS, ".", ",", "!"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<unk>",
                            mask_token="<mask>").save_pretrained(str(out))
    return out


def _doc(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, size=n))


def _lm_corpus(root: Path) -> None:
    rng = np.random.default_rng(7)
    root.mkdir()
    docs = [_doc(rng, int(k)) for k in rng.integers(3, 60, size=120)]
    with open(root / "a.jsonl", "wb") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"text": d, "id": i}).encode() + (b"\r\n" if i % 17 == 0 else b"\n"))
            if i % 11 == 0:
                f.write(b"\n   \n")  # blank lines: skipped, still counted in line numbers
            if i % 13 == 0:
                f.write(json.dumps({"text": docs[i // 2]}).encode() + b"\n")  # a duplicate
        f.write(b'{"text": broken\n{"body": "no text"}\n{"text": 5}\n{"text": "a\\u0000b"}\n{"text": "  "}\n')
        f.write(b'{"text": "caf\xc3"}\n{"text": "x"}\n' + json.dumps({"text": "the " * 700}).encode() + b"\n")
        f.write(json.dumps({"text": "Cafe\u0301  \t the\x07 king \u00a0 of  \n\n\n\n night"}).encode() + b"\n")
        f.write(json.dumps({"text": "\ud83d\ude00 the king \u2028 was"}).encode() + b"\n")
        f.write(json.dumps({"text": "the", "text2": 1}).encode() + b"\n" + b'{"text": "dup", "text": "the queen"}\n')
    (root / "b.txt").write_text("\n\n".join(docs[::3]) + "\n\n" + docs[5] + "\n\n\n" + _doc(rng, 30) + "\n")
    with open(root / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i in range(40):
            w.writerow([i, _doc(rng, int(rng.integers(2, 40)))])
        w.writerow([99, docs[7]])
    pq.write_table(pa.table({"text": [_doc(rng, int(k)) for k in rng.integers(1, 50, size=60)] + [None, docs[9]]}),
                   root / "d.parquet", row_group_size=16)


def _cls_corpus(root: Path) -> None:
    rng = np.random.default_rng(11)
    root.mkdir()
    with open(root / "a.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["sentence", "label"])
        for _i in range(80):
            w.writerow([_doc(rng, int(rng.integers(1, 200))), int(rng.integers(0, 2))])
        w.writerow(["the good film", "7x"])
    with open(root / "b.jsonl", "w") as f:
        for _i in range(50):
            f.write(json.dumps({"sentence": _doc(rng, int(rng.integers(1, 30))), "label": int(rng.integers(0, 3))}) + "\n")
        f.write(json.dumps({"sentence": "the plot", "label": None}) + "\n")
        f.write(json.dumps({"sentence": "the plot was dull", "label": "1"}) + "\n")


def _run(corpus: Path, out: Path, tok_dir: Path, cfg: DataConfig, task: str) -> dict:
    (out / PROGRESS).mkdir(parents=True)
    worker = UnitWorker(cfg, str(tok_dir), str(out), UnitTask(task, task == "sequence-classification"), None)
    worker.dedup = LocalDedup()
    summary = []
    for unit in plan_units(cfg, str(corpus)):
        worker.process(unit)
        summary.append(_unit_summary(out, unit.key))
    text = json.dumps(summary, sort_keys=True).replace(str(corpus), "<corpus>")
    return {"digest": hashlib.sha256(text.encode()).hexdigest()[:32], "summary": json.loads(text)}


def _unit_summary(out: Path, key: str) -> dict:
    marker = json.loads((out / PROGRESS / f"{key}.json").read_text())
    marker.pop("unit")
    for split in marker["splits"].values():
        for f in split["files"]:
            path = out / f.pop("path")
            assert f.pop("sha256") == hashlib.sha256(path.read_bytes()).hexdigest()  # the bytes as written
            table = pq.read_table(path)
            f["content"] = hashlib.sha256(json.dumps(table.drop_columns(["sample_id"]).to_pydict()).encode()).hexdigest()
    for split in ("train", "validation"):
        for _i, f in enumerate(sorted(Path(out, split).glob(f"{key}-*.parquet"))):
            ids = pq.read_table(f, columns=["sample_id"]).column(0).to_pylist()
            assert ids == [sample_id(f"{split}/{f.name}", j) for j in range(len(ids))]
    rejects = out / "rejects" / f"rejects-{key}.parquet"
    marker["rejects"] = pq.read_table(rejects).to_pylist() if rejects.is_file() else []
    marker["hashes"] = np.load(out / PROGRESS / f"{key}.hashes.npy").tolist()
    return marker


def _show(got: dict) -> None:
    """What a failure needs to see: the counts of each unit, and the digest."""
    for m in got["summary"]:
        print(m["rows_in"], m["rejected"], {s: (v["docs"], v["rows"], v["tokens_out"]) for s, v in m["splits"].items()},
              m["notes"])
    print("digest", got["digest"])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return _tokenizer(tmp_path_factory.mktemp("tok") / "tok")


def test_lm_shards_are_pinned(tmp_path, tok_dir):
    _lm_corpus(tmp_path / "corpus")
    cfg = DataConfig(source=str(tmp_path / "corpus"), block_size=8, shard_rows=7, min_chars=3, max_chars=2000,
                     validation_fraction=0.3, unit_bytes=1024, max_line_bytes=2048, tokenize_batch_size=16)
    got = _run(tmp_path / "corpus", tmp_path / "out", tok_dir, cfg, "causal-lm")
    _show(got)
    assert got["digest"] == LM_DIGEST


def test_classification_shards_are_pinned(tmp_path, tok_dir):
    _cls_corpus(tmp_path / "corpus")
    cfg = DataConfig(source=str(tmp_path / "corpus"), text_field="sentence", label_field="label", max_length=16,
                     shard_rows=9, validation_fraction=0.2, tokenize_batch_size=8)
    got = _run(tmp_path / "corpus", tmp_path / "out", tok_dir, cfg, "sequence-classification")
    _show(got)
    assert got["digest"] == CLS_DIGEST


def test_batch_hashes_equal_the_per_document_ones():
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcé😀 \n"), size=int(n))) for n in rng.integers(0, 40, size=3000)]
    hashes = text_hashes(texts)
    assert hashes.dtype == np.int64 and hashes.tolist() == [text_hash(t) for t in texts]
    for fraction in (0.0, 0.05, 0.5, 0.999):
        assert [("validation" if v else "train") for v in splits_of(hashes, fraction)] == \
            [split_of(t, fraction) for t in texts]
    name = "train/0123456789abcdef-00003.parquet"
    assert sample_ids(name, 2000).tolist() == [sample_id(name, i) for i in range(2000)]
    assert len(text_hashes([])) == 0 and len(sample_ids(name, 0)) == 0
