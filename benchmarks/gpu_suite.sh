#!/usr/bin/env bash
# One prepared GPU session (< 10 minutes on one H200): the CUDA path checks, the training-step
# throughput paper preset (online variants + the teacher-cache variants), the teacher-cache
# end-to-end epoch benchmark and the demo's GPU preset. Every result lands in $OUT_DIR
# (default benchmarks/results/, suffix _suite); each step has its own time limit so one slow
# step cannot eat the others' time. Exit status 1 if any step failed or ran out of time.
#
#     bash benchmarks/gpu_suite.sh                 # from the repository root, on the GPU host
#     PYTHON=.venv/bin/python OUT_DIR=/tmp/r bash benchmarks/gpu_suite.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-benchmarks/results}
mkdir -p "$OUT_DIR"
export PYTHONPATH=${PYTHONPATH:-$PWD} OMP_WAIT_POLICY=PASSIVE
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local started=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc after $((SECONDS - started)) s"
    tail -n 2 "$OUT_DIR/$name.log"
    [ "$rc" -eq 0 ] || status=1
}

step gpu_check_suite 130 "$PYTHON" benchmarks/gpu_check.py
step train_throughput_suite 200 "$PYTHON" benchmarks/train_throughput.py --preset paper --cudnn-benchmark \
    --out "$OUT_DIR/train_throughput_h200_suite.json"
step cache_epoch_suite 130 "$PYTHON" benchmarks/cache_epoch.py --preset gpu --rounds 2 --out "$OUT_DIR/cache_epoch_h200_suite.json"
DEMO_OUT=$(mktemp -d)
step demo_gpu_suite 110 "$PYTHON" -m insightface_adadistill demo --preset gpu --device cuda --out "$DEMO_OUT/demo"
cp "$DEMO_OUT"/demo/*.md "$DEMO_OUT"/demo/*.json "$OUT_DIR"/ 2>/dev/null || true
rm -rf "$DEMO_OUT"
exit $status
