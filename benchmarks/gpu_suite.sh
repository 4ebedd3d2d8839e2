#!/usr/bin/env bash
# One prepared GPU session (< 10 minutes on one H200): the CUDA path checks (incl. compile + CUDA
# graphs, uint8 normalisation bits, 2-process nccl when there are 2 GPUs), the training-step
# throughput paper preset for the r50 teacher (online variants, the teacher-cache variants, then
# compiled at batch 512 and CUDA graphs at batch 128, each beside its baseline), the step profile,
# the teacher-precision effect (fp16 included), the teacher-cache end-to-end epoch benchmark and
# the demo's GPU preset. Every result lands in $OUT_DIR
# (default benchmarks/results/, suffix _suite); each step has its own time limit so one slow
# step cannot eat the others' time, and the whole suite stops at SUITE_LIMIT seconds (570). The
# steps run in order of importance and their limits add up to SUITE_LIMIT, so every step gets its
# slot; ONLY="name ..." runs just the named steps (e.g. to finish the rest in a second session).
# Exit status 1 if any step failed, ran out of time or was skipped.
#
#     bash benchmarks/gpu_suite.sh                 # from the repository root, on the GPU host
#     PYTHON=.venv/bin/python OUT_DIR=/tmp/r bash benchmarks/gpu_suite.sh
#     ONLY="cache_epoch_suite profile_step_suite" bash benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-benchmarks/results}
mkdir -p "$OUT_DIR"
export PYTHONPATH=${PYTHONPATH:-$PWD} OMP_WAIT_POLICY=PASSIVE
status=0

SUITE_LIMIT=${SUITE_LIMIT:-570}  # seconds for the whole suite: the session's 10 minutes, less start-up

step() {  # step NAME SECONDS COMMAND...: run with a time limit (cut to what the suite has left), log to $OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then
        return
    fi
    local left=$((SUITE_LIMIT - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, the suite's ${SUITE_LIMIT} s are used up"
        status=1
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "== $name (limit ${limit} s): $*"
    local started=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc after $((SECONDS - started)) s"
    tail -n 2 "$OUT_DIR/$name.log"
    [ "$rc" -eq 0 ] || status=1
}

step gpu_check_suite 100 "$PYTHON" benchmarks/gpu_check.py
TT=("$PYTHON" benchmarks/train_throughput.py --preset paper --teachers r50 --cudnn-benchmark)
step train_throughput_suite 60 "${TT[@]}" --iters 15 \
    --variants dense-fp32 ours-fp32 ours-bf16-cl ours-fp16-cl-amp cached cached-amp \
    --out "$OUT_DIR/train_throughput_h200_suite.json"
DEMO_OUT=$(mktemp -d)
step demo_gpu_suite 230 "$PYTHON" -m insightface_adadistill demo --preset gpu --device cuda --out "$DEMO_OUT/demo"
cp "$DEMO_OUT"/demo/*.md "$DEMO_OUT"/demo/*.json "$OUT_DIR"/ 2>/dev/null || true
rm -rf "$DEMO_OUT"
step train_throughput_compiled_suite 60 "${TT[@]}" --batches 512 --warmup 8 \
    --variants dense-fp32 ours-fp16-cl-amp compiled-fp16-cl-amp --out "$OUT_DIR/train_throughput_compiled_h200_suite.json"
step train_throughput_graphs_suite 40 "${TT[@]}" --batches 128 --warmup 8 \
    --variants dense-fp32 ours-fp16-cl-amp graphs-fp16-cl-amp --out "$OUT_DIR/train_throughput_graphs_h200_suite.json"
step cache_epoch_suite 45 "$PYTHON" benchmarks/cache_epoch.py --preset gpu --rounds 1 --out "$OUT_DIR/cache_epoch_h200_suite.json"
step profile_step_suite 20 "$PYTHON" benchmarks/profile_step.py --steps 5 --out "$OUT_DIR/profile_step_h200_suite.json"
step precision_effect_suite 15 "$PYTHON" benchmarks/precision_effect.py --device cuda --lr 0.001 \
    --out "$OUT_DIR/precision_effect_h200_suite.jsonl"
exit $status
