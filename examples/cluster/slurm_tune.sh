#!/usr/bin/env bash
# Eight fastadapt tune workers as a Slurm job array, sharing one Optuna study in PostgreSQL (docs/CLUSTER.md).
#
#   export FASTADAPT_STORAGE=postgresql://tuner:PASSWORD@db.example.org:5432/studies
#   sbatch --export=ALL examples/cluster/slurm_tune.sh
#
# Every array task is one worker with one CPU and one torch thread; it takes the next trial from the database,
# runs it, and repeats until the study has its 40 finished trials. A worker that Slurm kills (time limit, node
# failure) stops beating; within 3 heartbeats its trial is failed and queued again for another worker. The tune
# folder (--dir) must be on a file system every node sees: the trials' run folders and best.toml are written there.
#SBATCH --job-name=fastadapt-tune
#SBATCH --array=0-7
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=02:00:00
#SBATCH --output=runs/slurm/tune-%A_%a.log
set -euo pipefail
: "${FASTADAPT_STORAGE:?export FASTADAPT_STORAGE=postgresql://USER:PASSWORD@HOST:5432/DATABASE first}"
export OMP_NUM_THREADS=1
mkdir -p runs/slurm
srun fastadapt tune maml-sinusoid run.threads=1 --dir runs/tune-maml-sinusoid --storage "$FASTADAPT_STORAGE" --trials 40 --heartbeat 30 --space "optim.lr={ low = 1e-4, high = 1e-2, log = true }" --space "algorithm.inner_steps=[1, 3, 5]"
