"""Packing keeps every token across batches; bucketing keeps every example and cuts padding."""

from __future__ import annotations

import numpy as np

from raylm.datasets.bucketing import bucket_batches, bucket_dict_batches, padding_fraction
from raylm.datasets.pack import pack_with_carry


def test_pack_with_carry_drops_only_the_final_partial_block():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(5, 100, rng.integers(1, 40))) for _ in range(200)]
    carry, blocks = np.empty(0, np.int32), []
    for i in range(0, 200, 17):
        b, carry = pack_with_carry(carry, docs[i: i + 17], 0, 16)
        blocks.append(b)
    flat = np.concatenate([b.reshape(-1) for b in blocks] + [carry])
    expected = np.concatenate([np.array(d + [0], np.int32) for d in docs])
    assert np.array_equal(flat, expected)  # tokens in + EOS == tokens out + dropped, same order
    assert len(carry) < 16 and all(b.shape[1] == 16 for b in blocks)


def test_bucket_batches_keeps_every_item_and_is_seeded():
    rng = np.random.default_rng(1)
    items = [list(range(int(n))) for n in rng.integers(1, 60, 1000)]
    batches = list(bucket_batches(items, 32, pool_batches=10, seed=3))
    assert sorted(map(len, sum(batches, []))) == sorted(map(len, items))
    assert [list(map(len, b)) for b in batches] == [list(map(len, b)) for b in bucket_batches(items, 32, pool_batches=10, seed=3)]
    naive = [items[i: i + 32] for i in range(0, 1000, 32)]
    assert padding_fraction(batches) < 0.15 and padding_fraction(naive) > 0.4


def test_bucket_dict_batches_keeps_rows_aligned():
    ids = np.empty(100, dtype=object)
    ids[:] = [list(range(n % 13 + 1)) for n in range(100)]
    big = {"input_ids": ids, "label": np.array([n % 13 + 1 for n in range(100)])}
    out = list(bucket_dict_batches([big], 8, seed=0))
    assert sum(len(b["label"]) for b in out) == 100
    for b in out:
        assert [len(x) for x in b["input_ids"]] == list(b["label"])


def test_eval_batches_regrouped_by_length_keep_every_row_and_its_label():
    """Validation batches of a classifier, regrouped by length: the same rows with their own labels and
    ids, each batch of similar lengths (so padding to its longest row wastes little)."""
    from raylm.datasets.streaming import regroup_by_length

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=70)
    rows = [np.arange(n, dtype=np.int32) + 1000 * i for i, n in enumerate(lengths)]
    batches = []
    for i in range(0, 70, 32):  # as Ray Data's numpy batches: object arrays of variable-length rows
        ids = np.empty(len(rows[i:i + 32]), dtype=object)
        ids[:] = rows[i:i + 32]
        batches.append({"input_ids": ids, "label": np.arange(i, i + len(ids)) % 2,
                        "sample_id": np.arange(i, i + len(ids))})
    out = regroup_by_length(batches, 32)
    assert [len(b["sample_id"]) for b in out] == [32, 32, 6]
    seen = {}
    for b in out:
        for ids, label, sid in zip(b["input_ids"], b["label"], b["sample_id"]):
            assert ids[0] // 1000 == sid and label == sid % 2  # a row keeps its label and id
            seen[int(sid)] = len(ids)
    assert seen == {i: int(n) for i, n in enumerate(lengths)}
    widths = [max(len(x) for x in b["input_ids"]) for b in out]
    padded = sum(w * len(b["sample_id"]) for w, b in zip(widths, out))
    unsorted = sum(max(len(x) for x in b["input_ids"]) * len(b["input_ids"]) for b in batches)
    assert padded < 0.8 * unsorted  # lengths uniform in 1..59 here; real text (long-tailed) gains more
    assert [len(x) for b in out for x in b["input_ids"]] == sorted(int(n) for n in lengths)
