#!/usr/bin/env bash
# README command 2: install raylm with its test extras, then run the unit, integration and e2e tiers.
# The `slow` tier (the Ray Tune sweeps, ~10 min on 2 cores) runs with: scripts/test.sh -m slow
# torch==2.13.0 first: on CPU machines it is the CPU build; a bare `torch` could pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec python -m pytest -p no:cacheprovider --timeout=1200 "$@"
