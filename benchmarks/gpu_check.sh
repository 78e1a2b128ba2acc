#!/usr/bin/env bash
# GPU readiness check (issue 17): one command, from the repository root, on a fresh GPU machine.
#
#   bash benchmarks/gpu_check.sh            # GPU: make install, then the stages below (< 8 min on an H100)
#   bash benchmarks/gpu_check.sh --smoke    # rehearsal on CPU: Triton interpreter, toy sizes, SmolLM2
#
# Stages, each under its own `timeout` (a failed or timed-out stage is reported, the next one runs):
#   install       make install (GPU mode always; --smoke only when .venv is missing)
#   model         convert the model from its GGUF once (cached; setup, like install)
#   device        GPU name, capability, torch / triton versions
#   kernel_tests  tests/test_kernels.py on CUDA with compiled Triton (TRITON_INTERPRET=0)
#   engine        greedy = model.generate and a random-operation parity walk, Qwen2.5-Coder-0.5B bf16 on CUDA
#   kernels       benchmarks/kernel_speed.py: kv_copy vs a same-bytes device copy and a per-layer loop; score vs
#                 log_softmax + gather at a 152k vocabulary
#   throughput    benchmarks/throughput.py on CUDA, 64 problems in flight: greedy / sampling n=4 / IDS n=4,
#                 engine vs HF generate
# JSON goes to $OUT when set (else benchmarks/results/gpu/; --smoke: a temporary folder), with logs/ and
# summary.json; one summary table is printed last. Exit status 0 only when every stage passed.
# Time limits can be changed with GPU_CHECK_T_<STAGE> (seconds), e.g. GPU_CHECK_T_THROUGHPUT=300.
# Converted models are cached in $DECODESEARCH_CACHE (GPU mode default: a folder under $TMPDIR or /tmp).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (accepted: --smoke, --help)" >&2; exit 2 ;;
    esac
done

if [ -n "${OUT:-}" ]; then
    RESULTS="$OUT"
elif [ "$SMOKE" = 1 ]; then
    RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_smoke.XXXXXX")"
else
    RESULTS="benchmarks/results/gpu"
fi
mkdir -p "$RESULTS/logs"
RESULTS="$(cd "$RESULTS" && pwd)"
STAGES="$RESULTS/stages.tsv"
: > "$STAGES"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PY=.venv/bin/python
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset DECODESEARCH_KERNELS

limit() {  # limit NAME DEFAULT: seconds for a stage, overridable by GPU_CHECK_T_<NAME>
    local var="GPU_CHECK_T_$(echo "$1" | tr '[:lower:]' '[:upper:]')"
    echo "${!var:-$2}"
}

# run_stage NAME SECONDS CMD...: run CMD under `timeout`, tee its output to logs/NAME.log, record the outcome.
run_stage() {
    local name="$1" secs="$2"
    shift 2
    echo
    echo "=== $name (limit ${secs}s): $*"
    local start rc
    start=$(date +%s)
    timeout -k 15 "$secs" "$@" 2>&1 | tee "$RESULTS/logs/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$secs" >> "$STAGES"
    [ "$rc" = 0 ] || echo "=== $name: exit status $rc (124: timed out); continuing"
}

skip_stage() {  # skip_stage NAME REASON
    printf '%s\t-1\t0\t%s\n' "$1" "$2" >> "$STAGES"
}

# ---------------------------------------------------------------------------------------------- setup
if [ "$SMOKE" = 1 ] && [ -x "$PY" ]; then
    skip_stage install ".venv exists (smoke mode does not reinstall)"
else
    run_stage install "$(limit install 600)" make install
fi

if [ "$SMOKE" = 1 ]; then
    export TRITON_INTERPRET=1
    MODEL=smollm2-135m-instruct DTYPE=float32 DEVICE=cpu
else
    export TRITON_INTERPRET=0
    export DECODESEARCH_CACHE="${DECODESEARCH_CACHE:-${TMPDIR:-/tmp}/decodesearch-cache}"
    MODEL=qwen2.5-coder-0.5b-instruct DTYPE=bfloat16 DEVICE=cuda
fi
SMOKE_FLAG=()
[ "$SMOKE" = 1 ] && SMOKE_FLAG=(--smoke)

# setup: convert the model once (cached), so the stages below only load it
run_stage model "$(limit model 300)" "$PY" benchmarks/gpu_check.py model-path "$MODEL" --out "$RESULTS/model.json"

run_stage device "$(limit device 60)" "$PY" benchmarks/gpu_check.py device --out "$RESULTS/device.json" "${SMOKE_FLAG[@]}"

# ------------------------------------------------------------------------- 1. correctness on the device
# TRITON_INTERPRET=0 with a GPU: tests/test_kernels.py runs on CUDA tensors with compiled kernels.
run_stage kernel_tests "$(limit kernel_tests 150)" .venv/bin/pytest -q -p no:cacheprovider tests/test_kernels.py \
    --junitxml="$RESULTS/kernel_tests.xml"

if [ "$SMOKE" = 1 ]; then  # the engine's forks and scores go through the (interpreted) Triton kernels too
    ENGINE_ARGS=(--prompts 2 --max-new 8 --ops 8)
    ENGINE_ENV=(env DECODESEARCH_KERNELS=triton)
else
    ENGINE_ARGS=(--prompts 8 --max-new 128 --ops 40)
    ENGINE_ENV=(env)
fi
run_stage engine "$(limit engine 120)" "${ENGINE_ENV[@]}" "$PY" benchmarks/gpu_check.py engine --model "$MODEL" --device "$DEVICE" \
    --dtype "$DTYPE" "${ENGINE_ARGS[@]}" --out "$RESULTS/engine.json"

# -------------------------------------------------------------------------------------- 2. kernels
run_stage kernels "$(limit kernels 75)" "$PY" benchmarks/kernel_speed.py "${SMOKE_FLAG[@]}" --out "$RESULTS/kernels.json"

# ----------------------------------------------------------------------------------- 3. throughput
if [ "$SMOKE" = 1 ]; then
    # a tiny random Llama with SmolLM2's tokenizer (throughput.py --smoke), toy problems
    TOKENIZER="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["path"])' "$RESULTS/model.json")"
    run_stage throughput "$(limit throughput 90)" "$PY" benchmarks/throughput.py --smoke --model "$TOKENIZER" \
        --dtype float32 --device cpu --problems 4 --serial-problems 2 --max-tokens 6 --hf-batch 2 \
        --hf-sample-batch 2 --out "$RESULTS/throughput.json"
else
    DATA_DIR=""
    for d in "${DECODESEARCH_DATA:-}" ../shared/data shared/data; do
        if [ -n "$d" ] && [ -f "$d/math500.jsonl" ]; then DATA_DIR="$d"; break; fi
    done
    if [ -z "$DATA_DIR" ]; then  # throughput does not depend on which problems: use generated ones
        echo "math500.jsonl not found (DECODESEARCH_DATA, ../shared/data, shared/data): synthetic problems"
        DATA_DIR="$WORK/data"
        "$PY" benchmarks/gpu_check.py synth-data "$DATA_DIR" --level 2 --count 64 > /dev/null
    fi
    run_stage throughput "$(limit throughput 165)" "$PY" benchmarks/throughput.py --model "$MODEL" \
        --dtype bfloat16 --device cuda --data-dir "$DATA_DIR" --level 2 --problems 64 --serial-problems 4 \
        --max-tokens 256 --max-rows 320 --hf-batch 64 --hf-sample-batch 16 --out "$RESULTS/throughput.json"
fi

# --------------------------------------------------------------------------------------- summary
"$PY" benchmarks/gpu_check.py summary "$RESULTS" "${SMOKE_FLAG[@]}"
