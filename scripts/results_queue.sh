#!/usr/bin/env bash
# Second round of Omniglot results (session 2): one job list, N workers pulling the next job, one CPU
# thread each; every run is capped by its wall-clock budget (optim.max_minutes), tested on the same
# 1000 fixed episodes (eval.seed = 1234) and resumable (rerun the same command).
#   nohup bash scripts/results_queue.sh worker &   (start one per core)
set -u
cd "$(dirname "$0")/.."
mkdir -p results/logs
jobs_file=results/logs/queue.jobs
[ -f "$jobs_file" ] || cat > "$jobs_file" <<'JOBS'
protonet-omniglot-5w1s 30 eval.test_settings=[[5,1],[20,1]]
protonet-omniglot-5w5s 30 eval.test_settings=[[5,5],[20,5]]
metasgd-omniglot-5w1s 15 data.meta_batch=8
reptile-omniglot-5w1s 15
maml-omniglot-5w5s 15 data.meta_batch=8
meta-lstm-omniglot-5w5s 15
matching-fce-omniglot-5w5s 10
matching-omniglot-5w5s 10
matching-fce-omniglot-20w1s 10
matching-omniglot-20w1s 10
reptile-omniglot-5w5s 10
matching-fce-omniglot-20w5s 10 algorithm.process_steps=10
matching-omniglot-20w5s 10
fomaml-omniglot-5w5s 8 data.meta_batch=8
anil-omniglot-5w5s 8 data.meta_batch=8
metasgd-omniglot-5w5s 8 data.meta_batch=8
JOBS
next_job() {  # pop the first line of the job list under a lock
  exec 9>"$jobs_file.lock"; flock 9
  local line; line=$(head -n 1 "$jobs_file")
  [ -n "$line" ] && sed -i 1d "$jobs_file"
  flock -u 9; echo "$line"
}
while job=$(next_job) && [ -n "$job" ]; do
  set -- $job; preset=$1 minutes=$2; shift 2
  echo "$(date -u +%FT%TZ) start $preset ($minutes min) $*" >> results/logs/queue.log
  fastadapt train "$preset" "optim.max_minutes=$minutes" run.threads=1 run.progress=false \
    "run.out=results/runs/$preset" "$@" > "results/logs/$preset.log" 2>&1
  echo "$(date -u +%FT%TZ) done $preset rc=$?" >> results/logs/queue.log
done
