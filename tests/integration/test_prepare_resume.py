"""An interrupted `raylm prepare` (the whole process group SIGKILLed, as on a preempted node)
continues where it stopped: finished units are not redone, and the result equals a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from raylm.datasets.config import DataConfig
from raylm.datasets.prepare import PROGRESS, prepare
from raylm.datasets.tokenizers import train_bpe

from prep_checks import assert_same_splits  # tests/integration/prep_checks.py

ROOT = Path(__file__).resolve().parents[2]


def test_killed_prepare_resumes_and_matches_a_clean_run(ray_session, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in range(40):
        docs = [f"file {f} document {i} " + "some words repeated " * (i % 7) for i in range(300)]
        docs += [f"shared across files {i}" for i in range(20)]  # duplicates: dedup must survive the kill
        (corpus / f"part-{f:02d}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = tmp_path / "tok"
    train_bpe([f"file {i} document some words repeated shared across" for i in range(200)], tok, vocab_size=300, min_frequency=1)
    prep = tmp_path / "prep"
    args = [f"data.source={corpus}", f"data.prepared_dir={prep}", f"data.tokenizer.path={tok}",
            "data.tokenize_actors=1", "data.shard_rows=50", "data.block_size=16",
            "data.prepare_in_driver_mb=0",  # the actor pool is what is killed (the resumed run prepares in the driver)
            # The session's cluster, not an embedded Ray of its own: with the suite's Ray and two busy
            # processes beside it, a new node failed to start three times in a row (its raylet gives the
            # dashboard agent a fixed 15 s). Killing the driver ends its actors there, as on a lost node.
            f"cluster.address={ray_session.get_runtime_context().gcs_address}"]
    log = tmp_path / "prepare.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "raylm", "prepare", str(ROOT / "configs" / "demo.yaml"), *args],
                                env=dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0"),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    markers = lambda: [p for p in (prep / PROGRESS).glob("*.json") if p.name != "inputs.json"]  # noqa: E731
    deadline = time.time() + 900  # only a bound: the loop ends at the third finished unit
    while len(markers()) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    ended = proc.poll()  # None: still running, as it should be
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name.split(".")[0] for p in markers()}
    assert 3 <= len(finished) < 40 and not (prep / "manifest.json").exists(), (
        f"the kill did not land mid-run: {len(finished)} units done, exit code before the kill {ended}; its output:\n"
        + log.read_text()[-4000:])
    before = {p: p.stat().st_mtime_ns for p in prep.glob("train/*.parquet") if p.name.split("-")[0] in finished}

    cfg = DataConfig(source=str(corpus), prepared_dir=str(prep), tokenizer={"path": str(tok)}, tokenize_actors=2,
                     shard_rows=50, block_size=16)
    resumed = prepare(cfg)
    clean = prepare(cfg.model_copy(update={"prepared_dir": str(tmp_path / "clean")}))
    for key in ("rows_in", "rows_kept", "rejected", "ledger_balanced"):
        assert resumed[key] == clean[key], key
    assert resumed["rejected"]["duplicate"] == 39 * 20
    assert_same_splits(resumed, clean)
    assert before and all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished units kept
