"""Cleaning, the dedup index's claim rule, the rejects ledger and the progress line, without Ray."""

from __future__ import annotations

import numpy as np

from raylm.datasets.clean import DedupIndex, RejectsWriter, normalize, read_rejects
from raylm.datasets.progress import Progress


def test_normalize_nfc_spaces_controls_blank_lines():
    assert normalize("  Cafe\u0301 \t au\u00a0lait\x07 \r\n\n\n\n  next  ") == "Café au lait\n\nnext"


def test_dedup_claims_survive_a_retried_unit_and_a_resume(tmp_path):
    index = DedupIndex(0, 1)
    h = np.array([1, 2, 3], dtype=np.int64)
    assert index.claim(h, owner=7).tolist() == [True, True, True]
    assert index.claim(np.array([2, 4]), owner=8).tolist() == [False, True]  # 2 belongs to unit 7
    assert index.claim(h, owner=7).tolist() == [True, True, True]  # unit 7 retried: its own documents
    np.save(tmp_path / "00000000000000ff.hashes.npy", np.array([10, 11, 12, 13], dtype=np.int64))
    half = DedupIndex(1, 2)  # the actor owning odd hashes loads only those
    assert half.load([str(tmp_path / "00000000000000ff.hashes.npy")]) == 2
    assert half.claim(np.array([11, 15]), owner=1).tolist() == [False, True]


def test_rejects_ledger_roundtrip(tmp_path):
    w = RejectsWriter(str(tmp_path / "rejects"), "abc")
    w.add([{"row_id": "f.jsonl:3", "source": "f.jsonl", "reject": "malformed_json", "text": ""},
           {"row_id": "f.jsonl:9", "source": "f.jsonl", "reject": "duplicate", "text": "x" * 5000}])
    w.close()
    assert w.counts == {"malformed_json": 1, "duplicate": 1}
    rows = read_rejects(str(tmp_path), reason="duplicate")
    assert [(r["row_id"], r["reason"], len(r["text"])) for r in rows] == [("f.jsonl:9", "duplicate", 2000)]


def test_progress_line_has_rates_and_eta():
    p = Progress(total_bytes=4 << 20, done_bytes=1 << 20, units=3, every=0)
    p.t0 -= 10
    p.update({"bytes": 1 << 20, "rows_in": 500, "tokens_out": 20_000})
    line = p.line()
    assert "1/3 units" in line and "2/4 MiB" in line and "50 rows/s" in line and "2,000 tokens/s" in line
    assert "ETA 0m20s" in line
