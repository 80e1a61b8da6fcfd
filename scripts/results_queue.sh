#!/usr/bin/env bash
# Session-2 Omniglot / MANN results: one job list, N workers pulling the next job, one CPU thread
# each. Every run is capped by its wall-clock budget (optim.max_minutes), then validated once more
# and tested on the fixed episodes (eval.seed = 1234: the same episodes for every run of a setting),
# and is resumable (rerun the same command). Start one worker per core:
#   nohup bash scripts/results_queue.sh > /dev/null 2>&1 &
#   nohup bash scripts/results_queue.sh > /dev/null 2>&1 &
# Job lines: RUN_NAME PRESET MINUTES [overrides]; the run goes to results/runs/RUN_NAME, its log to
# results/logs/RUN_NAME.log, start/end times to results/logs/queue.log. The list below is what ran
# in session 2, in that order, with those budgets (two workers on the 2-core machine).
set -u
cd "$(dirname "$0")/.."
mkdir -p results/logs
jobs_file=results/logs/queue.jobs
[ -s "$jobs_file" ] || cat > "$jobs_file" <<'JOBS'
protonet-omniglot-5w1s protonet-omniglot-5w1s 30 eval.test_settings=[[5,1],[20,1]]
protonet-omniglot-5w5s protonet-omniglot-5w5s 30 eval.test_settings=[[5,5],[20,5]]
metasgd-omniglot-5w1s metasgd-omniglot-5w1s 15 data.meta_batch=8
reptile-omniglot-5w1s-fresh reptile-omniglot-5w1s 15 algorithm.inner_state='fresh'
maml-omniglot-5w5s maml-omniglot-5w5s 15 data.meta_batch=8
meta-lstm-omniglot-5w5s meta-lstm-omniglot-5w5s 15
mann-omniglot mann-omniglot 20
reptile-omniglot-5w1s reptile-omniglot-5w1s 10
mann-lstm-omniglot mann-lstm-omniglot 20
matching-fce-omniglot-5w5s matching-fce-omniglot-5w5s 10
matching-omniglot-5w5s matching-omniglot-5w5s 10
matching-fce-omniglot-20w1s matching-fce-omniglot-20w1s 8
matching-omniglot-20w1s matching-omniglot-20w1s 8
JOBS
next_job() {  # pop the first line of the job list under a lock
  exec 9>"$jobs_file.lock"; flock 9
  local line; line=$(head -n 1 "$jobs_file")
  [ -n "$line" ] && sed -i 1d "$jobs_file"
  flock -u 9; echo "$line"
}
while job=$(next_job) && [ -n "$job" ]; do
  set -- $job; name=$1 preset=$2 minutes=$3; shift 3
  echo "$(date -u +%FT%TZ) start $name: $preset ($minutes min) $*" >> results/logs/queue.log
  fastadapt train "$preset" "optim.max_minutes=$minutes" run.threads=1 run.progress=false \
    "run.out=results/runs/$name" "$@" > "results/logs/$name.log" 2>&1
  echo "$(date -u +%FT%TZ) done $name rc=$?" >> results/logs/queue.log
done
