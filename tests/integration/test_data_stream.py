"""The length-grouped training stream on a real Ray Data split (issue 15): ragged rows as Ray hands
them over, equal batch counts per rank under `streaming_split(equal=True)`, every row once per
epoch, and a restarted split that skips k batches sees the same remaining batches."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.datasets.bucketing import padding_fraction, row_lengths
from raylm.datasets.streaming import TrainStream, open_split, read_small_split

pytestmark = pytest.mark.ray
BS, ROWS = 8, 1203


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory) -> tuple[str, dict]:
    """Three shards of classification rows (unpadded, lengths 1..60) in prepare's layout."""
    out = tmp_path_factory.mktemp("prepared")
    lengths = np.clip(np.random.default_rng(0).lognormal(2.3, 0.7, ROWS), 1, 60).astype(int)
    files, start = [], 0
    for k, n in enumerate((500, 500, ROWS - 1000)):
        ids = [list(range(5, 5 + int(m))) for m in lengths[start: start + n]]
        pq.write_table(pa.table({"sample_id": pa.array(range(start, start + n), pa.int64()),
                                 "input_ids": pa.array(ids, pa.list_(pa.int32())),
                                 "label": pa.array([i % 2 for i in range(n)], pa.int64())}), out / f"part-{k}.parquet")
        files.append({"path": f"part-{k}.parquet"})
        start += n
    return str(out), {"splits": {"train": {"files": files}}}


@pytest.fixture(scope="module")
def train_split(prepared):
    d, manifest = prepared
    return open_split(d, "train", manifest).materialize()


def epoch_per_rank(ds, group: bool, position: int = 0) -> list[list[dict]]:
    """One epoch of each of 2 ranks, consumed concurrently as Ray Train workers do."""
    splits = ds.streaming_split(2, equal=True)
    out: list[list[dict]] = [[], []]

    def consume(r: int) -> None:
        s = TrainStream(splits[r], BS, 3, 64, lambda b, _seed: b, 0, position,
                        varied_lengths=True, group_by_length=group, length_group_batches=10)  # a classifier's rows
        while True:
            b = s.next()
            if s.epoch:
                return
            out[r].append(b)

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def test_grouped_split_is_equal_complete_and_resumable(train_split):
    grouped, plain = epoch_per_rank(train_split, True), epoch_per_rank(train_split, False)
    assert [len(r) for r in grouped] == [len(r) for r in plain] == [ROWS // 2 // BS] * 2
    seen = [i for r in grouped for b in r for i in b["sample_id"].tolist()]
    assert len(seen) == len(set(seen)) == 2 * (ROWS // 2 // BS) * BS
    frac = lambda rs: padding_fraction([list(row_lengths(b["input_ids"])) for r in rs for b in r], key=int)  # noqa: E731
    assert frac(grouped) < 0.2 < 0.4 < frac(plain)
    resumed = epoch_per_rank(train_split, True, position=30)
    for r in range(2):
        assert [b["sample_id"].tolist() for b in resumed[r]] == [b["sample_id"].tolist() for b in grouped[r][30:]]


def _rows(ds) -> list[tuple]:
    return [(int(i), tuple(ids.tolist()), ids.dtype.str, int(y)) for b in ds.iter_batches(batch_size=97, batch_format="numpy")
            for i, ids, y in zip(b["sample_id"], b["input_ids"], b["label"])]


def test_a_small_split_read_by_the_driver_is_the_ray_data_read(prepared):
    """The driver's pyarrow read of a small split (start-up: no Ray Data execution) hands training the
    rows a Ray Data read would, in the same order, with the same types; `limit` cuts across shards."""
    d, manifest = prepared
    for limit in (None, 700):
        ref = open_split(d, "train", manifest)
        small = read_small_split(d, "train", manifest, limit=limit)
        assert _rows(small) == _rows((ref.limit(limit) if limit else ref).materialize())
    assert read_small_split(d, "train", manifest, max_mb=0) is None  # too big: Ray Data reads it
    assert read_small_split("s3://bucket/prepared", "train", manifest) is None
    per_rank = epoch_per_rank(read_small_split(d, "train", manifest), False)  # as Ray Train splits it
    assert [len(r) for r in per_rank] == [ROWS // 2 // BS] * 2
    seen = [i for r in per_rank for b in r for i in b["sample_id"].tolist()]
    assert len(seen) == len(set(seen))
