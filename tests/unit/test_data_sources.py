"""Sources without Ray: every format and compression, byte ranges, and each bad input by reason."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.datasets.config import DataConfig
from raylm.datasets.sources import BadRowError, Unit, check_row, iter_lines, plan_units, read_unit
from raylm.errors import UserError


def zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as s:
        s.write(data)
    return sink.getvalue().to_pybytes()


def rows_of(path: str, cfg: DataConfig | None = None, **kw) -> list[dict]:
    cfg = cfg or DataConfig(source=str(path), **kw)
    return [r for u in plan_units(cfg, str(path)) for r in read_unit(u, cfg)]


def kept(rows: list[dict]) -> list[str]:
    return [r["text"] for r in rows if not r["reject"]]


def reasons(rows: list[dict]) -> Counter:
    return Counter(r["reject"] for r in rows if r["reject"])


def write(path, data: bytes | str) -> str:
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize("suffix,pack", [("", lambda b: b), (".gz", gzip.compress),
                                         (".zst", zstd)])
def test_text_jsonl_csv_tsv_each_compression(tmp_path, suffix, pack):
    write(tmp_path / f"a.txt{suffix}", pack(b"para one\nstill one\n\n\npara two\n"))
    write(tmp_path / f"b.jsonl{suffix}", pack(b'{"meta": {"body": "nested doc"}}\n\n{"meta": {"body": "second"}}\n'))
    write(tmp_path / f"c.csv{suffix}", pack(b'text,label\n"a, quoted\nmultiline",pos\nplain,neg\n'))
    write(tmp_path / f"d.tsv{suffix}", pack(b"sentence\tlabel\nhello there\t1\n"))
    assert kept(rows_of(tmp_path / f"a.txt{suffix}")) == ["para one\nstill one", "para two"]
    rows = rows_of(tmp_path / f"b.jsonl{suffix}", text_field="meta.body")
    assert kept(rows) == ["nested doc", "second"]
    assert [r["row_id"].rsplit(":", 1)[1] for r in rows] == ["1", "3"]
    rows = rows_of(tmp_path / f"c.csv{suffix}", label_field="label")
    assert [(r["text"], r["label"], r["row_id"].rsplit(":", 1)[1]) for r in rows] == [
        ("a, quoted\nmultiline", "pos", "2"), ("plain", "neg", "4")]
    rows = rows_of(tmp_path / f"d.tsv{suffix}", text_field="sentence", label_field="label")
    assert [(r["text"], r["label"]) for r in rows] == [("hello there", "1")]


def test_parquet_row_ids_count_across_batches_and_row_groups(tmp_path):
    table = pa.table({"text": [f"doc {i}" for i in range(10_000)], "label": list(range(10_000))})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=3000)
    rows = rows_of(tmp_path / "p.parquet", label_field="label")
    assert len(rows) == 10_000 and not reasons(rows)
    assert rows[9999]["row_id"].endswith("p.parquet:#9999") and rows[9999]["text"] == "doc 9999"
    assert rows[4500]["label"] == "4500"
    cfg = DataConfig(label_field="label", unit_bytes=1024)  # several units of whole row groups
    units = plan_units(cfg, str(tmp_path / "p.parquet"))
    assert len(units) == 4
    assert [r["row_id"] for u in units for r in read_unit(u, cfg)] == [r["row_id"] for r in rows]


def test_text_split_modes(tmp_path):
    p = write(tmp_path / "t.txt", "a\nb\n\nc\n")
    assert kept(rows_of(p, text_split="line")) == ["a", "b", "c"]
    assert kept(rows_of(p, text_split="file")) == ["a\nb\n\nc"]


def test_iter_lines_offsets_and_long_line_not_held():
    chunks = [b"ab\ncd", b"e\n" + b"x" * 50, b"x" * 50 + b"\nlast"]
    assert list(iter_lines(iter(chunks), limit=60)) == [(0, b"ab"), (3, b"cde"), (7, None), (108, b"last")]


@pytest.mark.parametrize("fmt,split", [("jsonl", "line"), ("txt", "line"), ("txt", "paragraph")])
def test_byte_ranges_read_every_record_once_with_true_line_numbers(tmp_path, fmt, split):
    lines, docs = [], []
    for i in range(3000):
        if fmt == "jsonl":
            lines.append(json.dumps({"text": f"doc {i} " + "w" * (i % 37)}))
            docs.append(f"doc {i} " + "w" * (i % 37))
        elif split == "line":
            lines.append(f"doc {i} " + "w" * (i % 37))
            docs.append(lines[-1])
        else:  # paragraphs of 1-3 lines separated by 1-2 blank lines
            para = [f"doc {i} line {k}" for k in range(1 + i % 3)]
            lines += para + [""] * (1 + i % 2)
            docs.append("\n".join(para))
    path = write(tmp_path / f"big.{fmt}", "\n".join(lines) + "\n")
    cfg = DataConfig(source=path, unit_bytes=1024, text_split=split)
    units = plan_units(cfg, path)
    assert len(units) > 20
    rows = [r for u in units for r in read_unit(u, cfg)]
    assert kept(rows) == docs
    whole = [r["row_id"] for r in read_unit(Unit(path, "jsonl" if fmt == "jsonl" else "text", os.path.getsize(path)), cfg)]
    assert [r["row_id"] for r in rows] == whole


def test_bad_jsonl_rows_counted_by_reason_valid_rows_kept(tmp_path):
    lines = [b'{"text": "good one"}', b'{"text": broken', b'{"other": 1}', b'{"text": 5}',
             b'{"text": "nul\x00here"}', b'{"text": "   "}', b'{"text": "bad \xff utf8"}',
             b'{"text": "' + b"x" * 5000 + b'"}', b'{"text": "good two"}']
    path = write(tmp_path / "bad.jsonl", b"\n".join(lines))
    rows = rows_of(path, max_line_bytes=1024)
    assert kept(rows) == ["good one", "good two"]
    assert reasons(rows) == {"malformed_json": 1, "missing_text": 1, "text_not_string": 1, "nul_byte": 1,
                             "empty": 1, "invalid_utf8": 1, "too_long": 1}
    assert {r["reject"]: r["row_id"].rsplit(":", 1)[1] for r in rows if r["reject"]}["too_long"] == "8"


def test_fifty_megabyte_line_is_rejected_as_too_long(tmp_path):
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.write(b"before\n\n" + b"y" * (50 << 20) + b"\n\nafter\n")
    rows = rows_of(path)
    assert kept(rows) == ["before", "after"] and reasons(rows) == {"too_long": 1}
    cfg = DataConfig(source=str(path), on_error="fail")
    with pytest.raises(BadRowError, match=r"huge.txt:3: line longer than"):
        for r in read_unit(plan_units(cfg, str(path))[0], cfg):
            check_row(r, cfg)


def test_files_that_lie_about_their_type(tmp_path):
    write(tmp_path / "gz.jsonl", gzip.compress(b'{"text": "x"}\n'))
    write(tmp_path / "plain.jsonl.gz", b'{"text": "not compressed"}\n')
    write(tmp_path / "text.parquet", "just text\n")
    write(tmp_path / "img.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    for name in ("gz.jsonl", "plain.jsonl.gz", "text.parquet", "img.txt"):
        assert reasons(rows_of(tmp_path / name)) == {"wrong_format": 1}, name


def test_unreadable_file(tmp_path):
    rows = list(read_unit(Unit(str(tmp_path / "gone.txt"), "text", 10), DataConfig()))
    assert [r["reject"] for r in rows] == ["unreadable"]


def test_csv_missing_column_and_invalid_utf8(tmp_path):
    assert reasons(rows_of(write(tmp_path / "a.csv", "body\nx\n"))) == {"missing_column": 1}
    rows = rows_of(write(tmp_path / "b.csv", b"text\nok\nbad \xfe\nfine\n"))
    assert kept(rows) == ["ok", "fine"] and reasons(rows) == {"invalid_utf8": 1}


def test_fail_names_file_and_line(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"text": "ok"}\n{"text": "ok2"}\n{oops\n')
    cfg = DataConfig(source=path, on_error="fail")
    with pytest.raises(BadRowError, match=r"c.jsonl:3: malformed JSON"):
        for r in read_unit(plan_units(cfg, path)[0], cfg):
            check_row(r, cfg)


def test_empty_glob_and_empty_directory_name_the_pattern(tmp_path):
    with pytest.raises(UserError, match=r"no files match '.*\*\.jsonl'"):
        plan_units(DataConfig(), str(tmp_path / "*.jsonl"))
    with pytest.raises(UserError, match="no files match"):
        plan_units(DataConfig(), str(tmp_path))


def test_glob_and_directory_listing(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "a.txt", "a\n")
    write(tmp_path / "b.txt", "b\n")
    write(tmp_path / ".hidden.txt", "h\n")
    assert len(plan_units(DataConfig(), str(tmp_path))) == 2
    assert [os.path.basename(u.uri) for u in plan_units(DataConfig(), str(tmp_path / "**" / "*.txt"))] == ["b.txt", "a.txt"]


# ---------------------------------------------------------------- issue 14: every row is counted


def test_a_missing_column_rejects_every_record_and_names_the_files_columns(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("label\tcontent\n0\tbad film\n1\tgood film\n1\tfine film\n")
    cfg = DataConfig(source=str(path), text_field="sentence", label_field="label")
    notes: list[str] = []
    rows = [r for u in plan_units(cfg, str(path)) for r in read_unit(u, cfg, notes)]
    assert reasons(rows) == {"missing_column": 3}  # one per record, not one per file
    assert [r["row_id"].rsplit(":", 1)[1] for r in rows] == ["2", "3", "4"]
    assert notes == [f"{path}: no column 'sentence' (its columns: label, content)"]


def test_the_validation_files_read_with_their_own_column_names(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("label\tcontent\n0\tbad film\n1\tgood film\n")
    cfg = DataConfig(source="x", text_field="sentence", label_field="label", validation_text_field="content")
    rows = rows_of(path, cfg.for_validation())
    assert kept(rows) == ["bad film", "good film"] and [r["label"] for r in rows] == ["0", "1"]
    assert cfg.for_validation().label_field == "label"  # unset: the training files' name


def test_a_parquet_file_without_the_column_counts_its_records(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": ["a", "b", "c", "d"]}), path, row_group_size=3)
    cfg = DataConfig(source=str(path))
    notes: list[str] = []
    rows = [r for u in plan_units(cfg, str(path)) for r in read_unit(u, cfg, notes)]
    assert reasons(rows) == {"missing_column": 4}
    assert "its columns: content" in notes[0]


def test_an_unreadable_file_says_its_rows_are_not_counted(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    cfg = DataConfig(source=str(path))
    notes: list[str] = []
    rows = [r for u in plan_units(cfg, str(path)) for r in read_unit(u, cfg, notes)]
    assert reasons(rows) == {"wrong_format": 1}
    assert len(notes) == 1 and "cannot be counted" in notes[0] and str(path) in notes[0]
