"""`raylm prepare` as a user runs it: bad input under on_error=fail and an empty glob exit 2
with one readable line naming the file and line (or the pattern), no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_prepare(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "raylm", "prepare", str(ROOT / "configs" / "demo.yaml"),
                           f"data.prepared_dir={tmp_path / 'prep'}", "cluster.include_dashboard=false", *overrides],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)


def test_fail_and_empty_glob_exit_2_with_a_readable_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops\n')
    res = run_prepare(tmp_path, f"data.source={corpus}", "data.on_error=fail")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{corpus}/bad.jsonl:3: malformed JSON" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    res = run_prepare(tmp_path, f"data.source={corpus}/*.parquet")
    assert res.returncode == 2 and f"no files match '{corpus}/*.parquet'" in res.stdout + res.stderr
