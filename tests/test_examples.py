"""The scripts in examples/ run as a user runs them (a subprocess, from another folder), in their fast mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastadapt.nn.weights import load_safetensors

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPECT = {  # script -> a line its output must hold
    "own_data.py": "4-way 1-shot on new patterns: ",
    "adapt_predict.py": "accuracy ",
    "custom_algorithm.py": "cosine nearest mean, Omniglot 5-way 1-shot: ",
    "streaming.py": "mean squared error, adapting online: ",
    "own_image_folder.py": "5-way 1-shot on the folder's test classes: ",
    "pretrained_backbone.py": "ProtoNets from the pretrained backbone, Omniglot 5-way 1-shot: ",
    "torchrun_two_processes.py": "rank 0 of 2 processes, 4 steps: 5-way 1-shot ",
}


def test_every_example_is_listed_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECT)


@pytest.mark.parametrize("script", sorted(EXPECT))
def test_example_runs_in_fast_mode(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--fast", "--out", str(tmp_path / "run")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert EXPECT[script] in out.stdout, out.stdout
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    CHECK.get(script, lambda tmp_path, stdout: None)(tmp_path, out.stdout)


def _image_folder(tmp_path, stdout):
    """The folder the example wrote has the layout folder:DIR reads, PNG files in class folders."""
    root = tmp_path / "run-images"
    assert f"image folder: {root}" in stdout
    for part in ("train", "val", "test"):
        classes = sorted(p for p in (root / part).iterdir() if p.is_dir())
        assert len(classes) >= 5 and all(len(list(c.glob("*.png"))) == 8 for c in classes)


def _pretrained(tmp_path, stdout):
    """The run started from the saved encoder: after 3 Adam steps of lr 1e-3 its weights are within 0.01 of the
    file's."""
    saved = load_safetensors(tmp_path / "run-encoder.safetensors")
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True, map_location="cpu")["algorithm"]
    assert saved and {f"model.{k}" for k in saved} == set(
        trained
    )  # every tensor of the model came from the file (no head)
    conv = saved["body.0.weight"]
    assert (trained["model.body.0.weight"] - conv).abs().max() < 0.01 and not torch.equal(
        trained["model.body.0.weight"], conv
    )


def _torchrun(tmp_path, stdout):
    """Two ranks trained (the checkpoint says so); rank 0 alone printed and wrote the run folder (one record per logged
    step)."""
    assert "torchrun --standalone --nproc-per-node=2" in stdout and stdout.count("processes, 4 steps") == 1
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True, map_location="cpu")["world_size"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("split") == "train"]
    assert steps and len(steps) == len(set(steps))


CHECK = {
    "own_image_folder.py": _image_folder,
    "pretrained_backbone.py": _pretrained,
    "torchrun_two_processes.py": _torchrun,
}
