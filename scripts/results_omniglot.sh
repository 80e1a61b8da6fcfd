#!/usr/bin/env bash
# Omniglot 5-way 1-shot results for the episodic algorithms, all tested on the same 1000 fixed
# episodes (eval.seed = 1234, so the comparison is paired). Two queues run side by side, one CPU
# thread each; each run is capped by its wall-clock budget (optim.max_minutes) and resumable.
#   bash scripts/results_omniglot.sh A   and   bash scripts/results_omniglot.sh B
set -u
cd "$(dirname "$0")/.."
run() {  # preset minutes [overrides...]
  local preset=$1 minutes=$2; shift 2
  fastadapt train "$preset" "optim.max_minutes=$minutes" run.threads=1 run.progress=false \
    "run.out=results/runs/$preset" "$@" > "results/logs/$preset.log" 2>&1
}
mkdir -p results/logs
case "${1:-A}" in
  A)
    run maml-omniglot-5w1s 25 data.meta_batch=8  # 8 tasks per step instead of 32: 4x more steps in the CPU budget
    run fomaml-omniglot-5w1s 10
    run anil-omniglot-5w1s 10
    ;;
  B)
    run matching-fce-omniglot-5w1s 15
    run matching-omniglot-5w1s 15
    run meta-lstm-omniglot-5w1s 15
    run metasgd-omniglot-5w1s 10
    run reptile-omniglot-5w1s 10
    ;;
esac
