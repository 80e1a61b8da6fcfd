#!/usr/bin/env bash
# Issue 17 item 7: the GPU checks and figures, in one prepared script for a lent CUDA machine (~8 minutes at most).
#
#     OUT=/some/folder bash benchmarks/gpu.sh        # from the repository root; OUT defaults to ./gpu_out
#
# 1. environment: nvidia-smi, torch/CUDA versions; installs nothing unless fastadapt or pytest is missing, and then
#    only `pip install -e .[test]` (the machine may be offline: a failed install is logged and the rest still runs);
# 2. the GPU-relevant tests: tests/test_execution_paths.py's CUDA tests (run.device=auto -> cuda, every execution
#    path on CUDA equal to the CPU loop in float64, bf16 autocast's meta-gradient error on CUDA, a short training on CUDA in fp32
#    and bf16), the device and precision tests of tests/test_conventions.py and tests/test_perf.py;
# 3. a short training on CUDA through the command line (maml-omniglot-5w1s, 30 meta-steps, meta-batch 32), its
#    metrics.jsonl and results.json kept;
# 4. workloads (a) and (b) at meta-batch 32: fastadapt's paths and bf16 against the contenders that are installed
#    (benchmarks/gpu_compare.py; contenders missing on the machine are reported as skipped).
# Everything lands in $OUT (logs, junit XML, JSON, summary.txt). Each phase has its own time limit, so one that hangs
# cannot take the others' time; the script's exit status is 0 when every phase passed.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
PY="${PYTHON:-python}"
STATUS=0
START=$(date +%s)

note() { echo "$*" | tee -a "$SUMMARY"; }

phase() {  # phase NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the exit status
    local name="$1" limit="$2"
    shift 2
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    note "$name: exit $rc in $(( $(date +%s) - t0 )) s (limit $limit s; log $name.log)"
    [ "$rc" -eq 0 ] || STATUS=1
    return 0
}

# --- 1. environment ------------------------------------------------------------------------------------------------
{ nvidia-smi || echo "nvidia-smi not found"; } > "$OUT/nvidia-smi.txt" 2>&1
if ! "$PY" -c "import fastadapt, pytest" > /dev/null 2>&1; then
    phase install 180 "$PY" -m pip install --disable-pip-version-check -e ".[test]"
fi
"$PY" - > "$OUT/env.json" 2>&1 <<'EOF'
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
                  "device": torch.cuda.get_device_name(0) if cuda else None, "bf16_supported": cuda and torch.cuda.is_bf16_supported()}))
EOF
note "env: $(cat "$OUT/env.json")"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1; then
    note "no CUDA device visible to torch: nothing else to run"
    exit 1
fi

# --- 2. GPU-relevant tests -----------------------------------------------------------------------------------------
phase tests_cuda 150 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/tests_cuda.xml" tests/test_execution_paths.py -k cuda
phase tests_device 150 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/tests_device.xml" \
    -k "device or cuda or bf16 or precision" tests/test_conventions.py tests/test_perf.py

# --- 3. a short training on CUDA -----------------------------------------------------------------------------------
phase train_cuda 120 "$PY" -m fastadapt train maml-omniglot-5w1s run.device=auto optim.steps=30 data.meta_batch=32 \
    eval.val_every=0 eval.test_episodes=100 run.progress=false "run.out=$OUT/train_cuda"
rm -f "$OUT/train_cuda/"*.pt  # keep the figures (metrics.jsonl, results.json, config.json), not the weights

# --- 4. workloads (a) and (b) at meta-batch 32 against the installed contenders --------------------------------------
LEFT=$(( 470 - ($(date +%s) - START) ))  # what remains of ~8 minutes
if [ "$LEFT" -gt 60 ]; then
    phase compare "$LEFT" "$PY" benchmarks/gpu_compare.py --workloads a,b --meta-batch 32 --iters 10 --timeout 90 \
        --out "$OUT/gpu_compare.json"
    tail -n 20 "$OUT/compare.log" >> "$SUMMARY"
else
    note "compare: skipped, only $LEFT s left"
    STATUS=1
fi

note "total: $(( $(date +%s) - START )) s, status $STATUS"
exit "$STATUS"
