#!/usr/bin/env bash
# README command 2: install raylm with its test extras, then run every tier (unit, integration incl.
# the Ray Tune sweeps, e2e): 31.5 min on 2 cores with two other busy processes beside it (fresh clone,
# 2026-12-07). Arguments go to pytest (e.g. -m unit).
# torch==2.13.0 first: on CPU machines it is the CPU build; a bare `torch` could pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
ruff check .  # the [tool.ruff] rules in pyproject.toml; fails fast, before ~30 min of tests
# Without a -m of its own, every tier but `long` (multi-node, preemption, FSDP crash/reshard scenarios:
# `bash scripts/test.sh -m long` runs them); CI must finish in 35 minutes on 2 cores.
case " $* " in *" -m "*) select=() ;; *) select=(-m "not long") ;; esac
exec python -m pytest -p no:cacheprovider --timeout=1200 --durations=15 "${select[@]}" "$@"
