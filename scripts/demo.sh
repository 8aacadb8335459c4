#!/usr/bin/env bash
# README command 1: install raylm, then run the main job on an embedded local Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e .
exec python -m raylm run configs/demo.yaml "$@"
