#!/usr/bin/env bash
# Issue 7 report: Qwen2.5-Coder-0.5B-Instruct (bf16, CPU) on the first 30 MATH-500 problems,
# at most 768 new tokens: greedy, sampling n=4 (maj@4, pass@4) and IDS n=4. Results are resumable
# JSONL files in benchmarks/results/; rerunning this script continues where it stopped.
# Two single-threaded jobs side by side use both cores without OpenMP oversubscription.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DECODESEARCH_DATA:-../shared/data}
OUT=benchmarks/results
common=(--model qwen2.5-coder-0.5b-instruct --dtype bfloat16 --device cpu --dataset math500
        --data-dir "$DATA" --limit 30 --max-tokens 768 --seed 0)
export OMP_NUM_THREADS=1
export PATH="$PWD/.venv/bin:$PATH"
( decodesearch bench "${common[@]}" --strategy greedy --out $OUT/qwen_math500_greedy.jsonl
  decodesearch bench "${common[@]}" --strategy ids --n 4 --out $OUT/qwen_math500_ids4.jsonl ) &
decodesearch bench "${common[@]}" --strategy sampling --n 4 --out $OUT/qwen_math500_sampling4.jsonl &
wait
decodesearch plot $OUT/qwen_math500_greedy.jsonl $OUT/qwen_math500_sampling4.jsonl \
    $OUT/qwen_math500_ids4.jsonl --out $OUT/qwen_math500.png
