#!/usr/bin/env bash
# Session-2 Omniglot / MANN results: one job list, N workers pulling the next job, one CPU thread
# each. Every run is capped by its wall-clock budget (optim.max_minutes), then validated once more
# and tested on the fixed episodes (eval.seed = 1234: the same episodes for every run of a setting),
# and is resumable (rerun the same command). Start one worker per core:
#   nohup bash scripts/results_queue.sh > /dev/null 2>&1 &
#   nohup bash scripts/results_queue.sh > /dev/null 2>&1 &
# Job lines: RUN_NAME PRESET MINUTES [overrides]; the run goes to results/runs/RUN_NAME, its log to
# results/logs/RUN_NAME.log, start/end times to results/logs/queue.log. A job whose run folder holds a
# checkpoint resumes it: with a larger budget it trains on, with its budget spent it only tests.
# The list below is what ran in session 3, in that order (two workers on the 2-core machine); the
# session-2 list is in the git history of this file (commit 0fbe687).
set -u
cd "$(dirname "$0")/.."
mkdir -p results/logs
jobs_file=results/logs/queue.jobs
[ -s "$jobs_file" ] || cat > "$jobs_file" <<'JOBS'
mann-omniglot mann-omniglot 80
matching-omniglot-20w1s matching-omniglot-20w1s 8
fomaml-omniglot-5w5s maml-omniglot-5w5s 15 algorithm.name='fomaml' data.meta_batch=8
reptile-omniglot-5w1s-minibatch reptile-omniglot-5w1s 25 optim.steps=400 eval.val_every=100
reptile-omniglot-5w5s reptile-omniglot-5w5s 20 optim.steps=600 eval.val_every=0 eval.test_episodes=500
matching-fce-omniglot-20w5s matching-fce-omniglot-20w5s 10 algorithm.process_steps=10
anil-omniglot-5w5s maml-omniglot-5w5s 15 algorithm.name='anil' data.meta_batch=8
metasgd-omniglot-5w5s metasgd-omniglot-5w1s 15 data.shots=5 data.meta_batch=8
matching-omniglot-20w5s matching-omniglot-20w5s 10
protonet-omniglot-5w5s-10min protonet-omniglot-5w5s 10 eval.test_settings=[[5,5],[20,5]]
protonet-omniglot-5w1s-8min protonet-omniglot-5w1s 8 eval.test_settings=[[5,1],[20,1]]
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
