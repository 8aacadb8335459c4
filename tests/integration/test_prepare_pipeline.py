"""`prepare` on a real local Ray: ledger, dedup across files, fixed-row shards, checksums,
idempotent rerun, resume after an interruption, on_error=fail, classification."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.datasets.clean import read_rejects
from raylm.datasets.config import DataConfig
from raylm.datasets.prepare import PROGRESS, prepare
from raylm.datasets.sources import read_corpus
from raylm.datasets.tokenizers import train_bpe
from raylm.errors import UserError
from raylm.tasks.registry import prepare_data

from prep_checks import assert_same_splits  # tests/integration/prep_checks.py

WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls sing of rivers and stone".split()


def doc(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(5 + i % 23)) + f" number {i}"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tok") / "tok"
    train_bpe([doc(i) for i in range(500)], out, vocab_size=300, min_frequency=1)
    return str(out)


def make_corpus(root: Path) -> dict:
    """400 JSONL docs with 5 bad lines, a text file repeating 30 of them, a gzipped CSV."""
    root.mkdir()
    lines = [json.dumps({"text": doc(i)}) for i in range(400)]
    bad = ['{"text": oops', '{"title": "no text"}', '{"text": 12}', '{"text": ""}', '{"text": "a\\u0000b"}']
    for k, line in enumerate(bad):
        lines.insert(50 + 60 * k, line)
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    (root / "b.txt").write_text("\n\n".join(doc(i) for i in range(30)) + "\n\nonly in b\n")
    (root / "c.csv.gz").write_bytes(gzip.compress(("text\n" + "\n".join(f"csv row {i}" for i in range(20))).encode()))
    return {"rows_in": 405 + 31 + 20, "duplicate": 30, "bad": 5}


def test_prepare_ledger_shards_idempotent_and_resumable(ray_session, tmp_path, tokenizer):
    expect = make_corpus(tmp_path / "corpus")
    # prepare_in_driver_mb=0: the actor pool, as for any corpus over 8 MB (this one would be prepared in the driver).
    cfg = DataConfig(source=str(tmp_path / "corpus"), prepared_dir=str(tmp_path / "prep"), block_size=16, tokenize_actors=2,
                     shard_rows=7, unit_bytes=4096, validation_fraction=0.2, tokenizer={"path": tokenizer},
                     prepare_in_driver_mb=0)
    m = prepare(cfg)
    assert m["units"] > 4  # a.jsonl was read as several byte ranges
    assert m["rows_in"] == expect["rows_in"] and m["ledger_balanced"]
    assert m["rejected"] == {"duplicate": 30, "empty": 1, "malformed_json": 1, "missing_text": 1,
                             "nul_byte": 1, "text_not_string": 1}
    assert m["rows_kept"] == 400 + 1 + 20
    rejects = read_rejects(cfg.prepared_dir, reason="malformed_json")
    assert [r["row_id"] for r in rejects] == [f"{tmp_path}/corpus/a.jsonl:51"]
    ids = set()
    for split in ("train", "validation"):
        s = m["splits"][split]
        assert s["tokens_in"] + s["docs"] == s["tokens_out"] + s["dropped"]  # EOS after every document
        short = {}
        for f in s["files"]:
            path = os.path.join(cfg.prepared_dir, f["path"])
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == f["sha256"]
            table = pq.read_table(path)
            assert table.num_rows == f["rows"] <= 7
            if f["rows"] < 7:  # at most one short shard per unit and split: its last
                unit = os.path.basename(f["path"]).rsplit("-", 1)[0]
                assert unit not in short
                short[unit] = f
            ids.update(table.column("sample_id").to_pylist())
        assert sum(f["rows"] for f in s["files"]) == s["rows"]
    assert len(ids) == m["splits"]["train"]["rows"] + m["splits"]["validation"]["rows"]

    # The same corpus prepared in the driver (small and local: no actor pool): the same splits and ledger.
    here = prepare(cfg.model_copy(update={"prepared_dir": str(tmp_path / "here"), "prepare_in_driver_mb": 8.0}))
    for key in ("rows_in", "rows_kept", "rejected", "ledger_balanced", "units"):
        assert here[key] == m[key], key
    assert_same_splits(here, m)
    assert [r["row_id"] for r in read_rejects(str(tmp_path / "here"), reason="malformed_json")] == [
        f"{tmp_path}/corpus/a.jsonl:51"]

    mtimes = {p: p.stat().st_mtime_ns for split in ("train", "validation")
              for p in Path(cfg.prepared_dir, split).glob("*.parquet")}
    assert prepare(cfg)["created"] == m["created"]  # up to date: nothing rebuilt

    # An interrupted run: no manifest, and two units had written shards but not their markers.
    os.remove(Path(cfg.prepared_dir, "manifest.json"))
    markers = sorted(Path(cfg.prepared_dir, PROGRESS).glob("*.json"))
    gone = [p for p in markers if p.name != "inputs.json"][:2]
    for p in gone:
        p.unlink()
    m2 = prepare(cfg)
    for key in ("rows_in", "rows_kept", "rejected", "ledger_balanced"):
        assert m2[key] == m[key], key
    assert_same_splits(m2, m)
    redone = {p.name.split(".")[0] for p in gone}
    for p, t in mtimes.items():
        if p.name.rsplit("-", 1)[0] not in redone:
            assert p.stat().st_mtime_ns == t, f"{p} was rewritten although its unit had finished"


def test_fail_stops_with_file_and_line(ray_session, tmp_path, tokenizer):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "fine too"}\n{"text": broken\n')
    cfg = DataConfig(source=str(tmp_path / "c"), prepared_dir=str(tmp_path / "p"), on_error="fail", tokenize_actors=1,
                     tokenizer={"path": tokenizer})
    with pytest.raises(UserError, match=r"bad\.jsonl:3: malformed JSON"):
        prepare(cfg)


def test_classification_truncates_and_maps_string_labels(ray_session, tmp_path, tokenizer):
    (tmp_path / "c").mkdir()
    rows = [f"{doc(i) * (1 + i % 4)}\t{'pos' if i % 2 else 'neg'}" for i in range(60)] + ["odd one\tmaybe"]
    (tmp_path / "c" / "t.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    cfg = DataConfig(source=str(tmp_path / "c"), prepared_dir=str(tmp_path / "p"), text_field="sentence",
                     label_field="label", labels=["neg", "pos"], max_length=24, shard_rows=16, tokenize_actors=1,
                     validation_fraction=0.0, tokenizer={"path": tokenizer})
    m = prepare_data(cfg, "sequence-classification")
    assert m["rejected"] == {"bad_label": 1} and m["num_labels"] == 2
    table = pa.concat_tables(pq.read_table(os.path.join(cfg.prepared_dir, f["path"])) for f in m["splits"]["train"]["files"])
    assert table.num_rows == 60 and max(len(x) for x in table.column("input_ids").to_pylist()) == 24
    assert sorted(set(table.column("label").to_pylist())) == [0, 1]
    assert m["splits"]["train"]["dropped"] > 0


def test_read_corpus_streams_rows_with_their_reasons(ray_session, tmp_path):
    make_corpus(tmp_path / "corpus")
    rows = read_corpus(DataConfig(source=str(tmp_path / "corpus"), unit_bytes=4096)).take_all()
    assert len(rows) == 456
    assert sum(1 for r in rows if r["reject"]) == 5 and len({r["row_id"] for r in rows}) == 456


def test_tokenizer_pools_size_by_the_machine_on_the_embedded_ray(ray_session, monkeypatch):
    """The embedded Ray's logical CPUs (max(cores, 8)) oversubscribe a small machine on purpose; a pool
    of CPU-bound tokenizer actors must not follow them (8 actors on 2 cores: 100 MB in 29 s, not 22)."""
    from raylm.cluster import _connect
    from raylm.datasets import labelled as task_prepare
    from raylm.datasets import units as prep

    cfg = DataConfig(source="x", prepared_dir="y")
    assert prep._pool_size(cfg) == 8  # a cluster raylm joined: its CPU resources (this session's Ray: 8)
    monkeypatch.setitem(_connect._EMBEDDED, "cores", 2)  # as connect() records when it starts the embedded Ray
    assert _connect.usable_cpus() == 2
    assert prep._pool_size(cfg) == 2
    assert task_prepare.pool_size(cfg) == 1  # one core left for the tasks around the pool
    assert prep._pool_size(DataConfig(source="x", prepared_dir="y", tokenize_actors=3)) == 3
    assert 1 <= _connect.machine_cores() <= (os.cpu_count() or 1)
