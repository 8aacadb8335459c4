#!/usr/bin/env bash
# Pretrain -> instruction-tune -> compare, all on CPU (issue 29's last step: "evaluate on the test set, comparing
# the pretrained and the fine-tuned model"). GSM8K's training rows are cut in two: the last 500 are held out of
# the SFT run and score both models; the rest train (5% of them validate, by a hash of the text).
#   bash scripts/sft_compare.sh            (~15 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
GSM8K=${GSM8K:-../shared/data/gsm8k/train.jsonl}
mkdir -p data/gsm8k
total=$(wc -l < "$GSM8K")
head -n $((total - 500)) "$GSM8K" > data/gsm8k/sft_train.jsonl
tail -n 500 "$GSM8K" > data/gsm8k/heldout.jsonl
echo "[sft_compare] $((total - 500)) rows to train on, 500 held out: data/gsm8k/heldout.jsonl"
[ -f runs/pretrain-512/export/config.json ] || raylm train configs/pretrain-512.yaml "$@"
raylm train configs/sft-gsm8k.yaml "$@"
raylm eval runs/pretrain-512/export runs/sft-gsm8k/export --input data/gsm8k/heldout.jsonl --task sft \
  --report runs/sft-gsm8k/compare_heldout
