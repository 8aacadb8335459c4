#!/usr/bin/env bash
# LoRA and QLoRA on a ~1.1B Llama at 2,048-token packed rows: raylm train vs a bare peft loop (issue 29; see
# benchmarks/gpu_sft.py's docstring). Two steps:
#   here (no GPU; ../shared beside the checkout, pip reaching PyPI), from the project root:
#     bash benchmarks/gpu_sft.sh kit [extra requirement ...]
#       builds .gpu-kit/ (../shared/gpu-kit/make-kit.sh: Ray, pydantic, + peft at this machine's version) and adds
#       bitsandbytes with only its CPU and CUDA 13 libraries (the wheel is 43 MB with one per CUDA/ROCm version:
#       the device's torch is CUDA 13; trimmed, ~7 MB), then copies 3,000 GSM8K rows to data/gpu_sft/
#       (git-ignored). Extra requirements go to make-kit.sh, e.g. liger-kernel (raylm's loss then uses Liger's
#       fused linear cross-entropy instead of its chunked one; the bare loop keeps HF's).
#   device: command 'set -o pipefail; bash benchmarks/gpu_sft.sh 2>&1 | tee $OUT/log.txt', carrying
#       [".gpu-kit", "data/gpu_sft"], timeout_s 540. Check `du -sh .gpu-kit data/gpu_sft` first (64 MiB in all).
# Time: the device gives ~15 min in all (start, idle and every call counted), so this aims at ~5 min: kit install
#   + Ray ~40 s, model build and save ~20 s, tokenizer + raylm prepare ~30 s, then per mode raylm (Ray start, load,
#   25 steps, eval, checkpoint, export) ~60-90 s and bare (load, 25 steps) ~30-45 s. Each side is stopped after
#   --side-timeout (240 s); results are written after each mode, so a cut run keeps what it measured.
#   Arguments go to gpu_sft.py (e.g. --modes lora, --steps 45 --skip 5, --compile auto, --no-gc).
# gpu_sft.py copies benchmarks/results/gpu_sft.json and each side's log to $OUT.
set -euo pipefail
if [ "${1:-}" = kit ]; then
  shift
  bash ../shared/gpu-kit/make-kit.sh "peft==$(python3 -c 'import peft; print(peft.__version__)')" "$@"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp" "bitsandbytes==${BNB_VERSION:-0.50.2}"
  python3 benchmarks/gpu_sft.py --trim-wheel "$tmp"/bitsandbytes-*.whl .gpu-kit/whl
  rm -rf "$tmp"
  python3 benchmarks/gpu_sft.py --copy-rows --rows 3000
  du -sh .gpu-kit data/gpu_sft
  echo "gpu_sft: device call: command 'set -o pipefail; bash benchmarks/gpu_sft.sh 2>&1 | tee \$OUT/log.txt', carry ['.gpu-kit', 'data/gpu_sft']"
  exit 0
fi
[ -f data/gpu_sft/gsm8k.jsonl ] || { echo "gpu_sft: data/gpu_sft/gsm8k.jsonl missing: run 'bash benchmarks/gpu_sft.sh kit' here and carry data/gpu_sft"; exit 2; }
source .gpu-kit/env.sh
# the kit's Ray comes out of a zip, which keeps no file modes: its binaries (gcs_server, raylet) need +x
find /tmp/site/ray/core -type f -exec chmod a+x {} +
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import peft, bitsandbytes; print('peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -2 || true
python3 benchmarks/gpu_sft.py "$@"
