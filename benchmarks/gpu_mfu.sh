#!/usr/bin/env bash
# On the H200 device machine (see ../shared/gpu-kit/README.md), from the project root, carrying .gpu-kit:
#   here:   bash ../shared/gpu-kit/make-kit.sh liger-kernel     (Ray, pydantic and Liger Kernel as wheels)
#   device: bash benchmarks/gpu_mfu.sh --sizes 124M,1B             (two sizes: 5.5-6 min with the kit install
#           on the H200, 2026-11-30; a size ~2.5-3 min, so all three should fit a 570 s call). gpu_mfu.py copies
#           its results to $OUT.
set -euo pipefail
source .gpu-kit/env.sh
# the kit's Ray comes out of a zip, which keeps no file modes: its binaries (gcs_server, raylet) need +x
find /tmp/site/ray/core -type f -exec chmod a+x {} +
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import liger_kernel.transformers; print('liger-kernel: importable')" 2>&1 | tail -2
python3 benchmarks/gpu_mfu.py "$@"
