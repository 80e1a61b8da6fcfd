"""The cluster examples (examples/cluster/, docs/CLUSTER.md) are valid: the Slurm script is bash that parses, the
Kubernetes manifest is YAML of a Job, and the command in each is a fastadapt command line whose preset, overrides,
search space and storage URL are accepted."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from fastadapt.apps.storage import normalize
from fastadapt.apps.tuning import parse_spec
from fastadapt.cli import _cmd_tune, build_parser
from fastadapt.config import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "cluster"
URL = "postgresql://tuner:secret@db.example.org:5432/studies"


def check_tune_command(argv: list[str]) -> None:
    """``argv`` (after ``fastadapt``) is a tune command on a shared PostgreSQL storage whose every part is valid."""
    args = build_parser().parse_args(argv)
    assert args.fn is _cmd_tune and args.storage == URL and args.heartbeat >= 1
    assert normalize(args.storage).startswith("postgresql+psycopg://")
    cfg = load_config(args.config, args.overrides)  # the preset and the overrides
    assert cfg.eval.val_every > 0 and cfg.data.val_part  # tuning needs a validation score
    spec = parse_spec({}, args.space, args.trials)
    assert spec.trials == args.trials and {p.key for p in spec.space} == {"optim.lr", "algorithm.inner_steps"}
    assert "run.threads=1" in args.overrides  # one torch thread a worker


def test_the_slurm_array_script_is_bash_and_runs_a_valid_tune_worker():
    pytest.importorskip("optuna")
    pytest.importorskip("psycopg")
    script = EXAMPLES / "slurm_tune.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    lines = script.read_text().splitlines()
    directives = [line.split()[1] for line in lines if line.startswith("#SBATCH")]
    assert any(d.startswith("--array=") for d in directives) and "--cpus-per-task=1" in directives
    (command,) = [line for line in lines if line.startswith("srun fastadapt ")]
    argv = shlex.split(command.replace('"$FASTADAPT_STORAGE"', URL))
    assert argv[:2] == ["srun", "fastadapt"]
    check_tune_command(argv[2:])


def test_the_kubernetes_job_is_yaml_of_an_indexed_job_running_a_valid_tune_worker():
    pytest.importorskip("optuna")
    pytest.importorskip("psycopg")
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load((EXAMPLES / "tune-job.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["spec"]["parallelism"] >= 2 and job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FASTADAPT_STORAGE"]["valueFrom"]["secretKeyRef"]["key"] == "url"  # the password stays in a Secret
    assert env["OMP_NUM_THREADS"]["value"] == "1"
    command = [URL if part == "$(FASTADAPT_STORAGE)" else part for part in container["command"]]
    assert command[0] == "fastadapt" and all(isinstance(part, str) for part in command)
    check_tune_command(command[1:])
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts == {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}
