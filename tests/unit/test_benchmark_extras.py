"""A benchmark whose reference side is not installed says what to install in one line (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")


def test_a_missing_extra_is_one_line_and_exit_2():
    code = f"import sys; sys.path.insert(0, {BENCH!r}); import _extras; _extras.require('json', 'no_such_module_xyz')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "-c: needs no_such_module_xyz (the reference side): pip install -e '.[bench]'"]


@pytest.mark.parametrize("script,module", [("bench_train_sst2.py", "accelerate"), ("bench_tasks.py", "accelerate"),
                                           ("bench_prepare.py", "datasets")])
def test_benchmarks_with_an_hf_side_check_their_extra_before_anything_else(script, module):
    import importlib.util

    res = subprocess.run([sys.executable, os.path.join(BENCH, script), "--help"], capture_output=True, text=True)
    if importlib.util.find_spec(module) is None:  # as on a fresh `pip install -e '.[test]'`
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [
            f"{os.path.join(BENCH, script)}: needs {module} (the reference side): pip install -e '.[bench]'"]
    else:
        assert res.returncode == 0 and "usage" in res.stdout
