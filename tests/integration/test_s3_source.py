"""The object store path for real: a moto S3 server on 127.0.0.1, pyarrow.fs in the driver and in
Ray workers (endpoint and credentials from the environment only)."""

from __future__ import annotations

import gzip
import io
import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.datasets.config import DataConfig
from raylm.datasets.prepare import prepare
from raylm.datasets.sources import plan_units, read_unit
from raylm.errors import UserError


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="corpus")
    lines = [json.dumps({"doc": {"text": f"jsonl document {i} " + "words " * (i % 9)}}) for i in range(300)]
    lines.insert(7, "{not json")
    client.put_object(Bucket="corpus", Key="raw/a.jsonl", Body="\n".join(lines).encode())
    client.put_object(Bucket="corpus", Key="raw/b.jsonl.gz",
                      Body=gzip.compress(b'{"doc": {"text": "gzipped one"}}\n{"doc": {"text": "gzipped two"}}\n'))
    buf = io.BytesIO()
    pq.write_table(pa.table({"doc.text": [f"parquet row {i}" for i in range(50)]}), buf)
    client.put_object(Bucket="corpus", Key="raw/c.parquet", Body=buf.getvalue())
    yield client
    mp.undo()
    server.stop()


def test_s3_listing_globs_and_empty_pattern(s3):
    units = plan_units(DataConfig(), "s3://corpus/raw/*.jsonl*")
    assert [u.uri for u in units] == ["s3://corpus/raw/a.jsonl", "s3://corpus/raw/b.jsonl.gz"]
    cfg = DataConfig(text_field="doc.text")
    assert [r["text"] for r in read_unit(units[1], cfg)] == ["gzipped one", "gzipped two"]
    with pytest.raises(UserError, match=r"no files match 's3://corpus/nothing/\*\.txt'"):
        plan_units(cfg, "s3://corpus/nothing/*.txt")


def test_prepare_from_s3_in_ray_workers(ray_session, s3, tmp_path):
    cfg = DataConfig(source="s3://corpus/raw", text_field="doc.text", prepared_dir=str(tmp_path / "p"),
                     unit_bytes=2048, block_size=16, tokenize_actors=2, validation_fraction=0.0,
                     tokenizer={"vocab_size": 300, "min_frequency": 1})
    m = prepare(cfg)
    assert m["units"] > 3  # a.jsonl read from S3 as byte ranges
    assert m["rows_in"] == 301 + 2 + 50 and m["rejected"] == {"malformed_json": 1}
    assert m["rows_kept"] == 352 and m["ledger_balanced"]
