"""What users of the PyTorch ecosystem expect: packaging metadata, command-line conventions, devices, DataLoader
interop."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import fastadapt
import helpers
from fastadapt import cli
from fastadapt.config import SECTIONS, RunConfig, field_comments, load_config, preset_names
from fastadapt.core.episodes import TaskBatch, collate_tasks
from fastadapt.core.errors import ConfigError
from fastadapt.data import ClassDataset, EpisodeDataset, EpisodeSampler, load_omniglot
from fastadapt.runtime import distributed
from fastadapt.runtime.devices import check_device, resolve_device
from fastadapt.training.loop import train

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
MPS = torch.backends.mps.is_available()


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


# 1. packaging


def test_pyproject_declares_tomli_below_311_the_licence_files_and_classifiers():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "tomli>=2; python_version < '3.11'" in project["dependencies"]
    assert project["requires-python"] == ">=3.10"
    assert project["license"] == "MIT"
    assert set(project["license-files"]) == {"LICENSE", "src/fastadapt/data/LICENSE-omniglot.txt"}
    for f in project["license-files"]:
        assert (ROOT / f).is_file(), f
    text = (ROOT / "LICENSE").read_text()
    assert "MIT License" in text and "Copyright (c) 2026 the fastadapt developers" in text
    assert "src/fastadapt/data/LICENSE-omniglot.txt" in text  # the bundled data's own licence is pointed to
    versions = {
        c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if c.startswith("Programming Language :: Python :: 3.")
    }
    assert versions == {"3.10", "3.11", "3.12"}


def test_installed_metadata_has_the_licence_classifiers_and_tomli_marker():
    meta = importlib.metadata.metadata("fastadapt")  # current after `pip install -e . --no-deps`
    assert meta.get("License-Expression") == "MIT" or meta.get("License") == "MIT"
    assert {"LICENSE", "src/fastadapt/data/LICENSE-omniglot.txt"} <= set(meta.get_all("License-File") or [])
    classifiers = set(meta.get_all("Classifier") or [])
    assert {
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Programming Language :: Python :: 3.10",
    } <= classifiers
    requires = [r.replace(" ", "").replace("'", '"') for r in meta.get_all("Requires-Dist") or []]
    assert 'tomli>=2;python_version<"3.11"' in requires


# 2. the command line


def test_python_m_fastadapt_is_the_command_with_its_exit_status():
    ok = _python("-m", "fastadapt", "--version")
    assert ok.returncode == 0, ok.stderr
    assert re.fullmatch(
        rf"fastadapt {re.escape(fastadapt.__version__)} \(torch \S+, Python 3\.\d+\.\d+\)\n", ok.stdout
    ), ok.stdout
    assert f"torch {torch.__version__}," in ok.stdout
    bad = _python("-m", "fastadapt", "config", "no-such-preset")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("fastadapt: error: unknown preset 'no-such-preset'") and bad.stderr.count("\n") == 1


def test_the_parser_and_python_m_start_without_torch():
    code = "import sys, fastadapt.cli, fastadapt.__main__; fastadapt.cli.build_parser(); print('torch' in sys.modules)"
    out = _python("-c", code)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("preset", preset_names())
def test_config_command_prints_a_toml_that_loads_back_to_the_same_config(preset, tmp_path, capsys):
    assert cli.main(["config", preset]) == 0
    path = tmp_path / "saved.toml"
    path.write_text(capsys.readouterr().out)
    assert load_config(str(path)).to_dict() == load_config(preset).to_dict()


def test_config_command_prints_every_key_with_its_value_and_comment(capsys):
    overrides = [
        "data.ways=7",
        "eval.test_settings=[[5, 1], [20, 5]]",
        "data.options={ note = 'a \"quoted\" \\\\ value' }",
        "algorithm.scale=5.0",
    ]
    assert cli.main(["config", "protonet-quick", *overrides]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    for name, cls in SECTIONS.items():
        body = lines[lines.index(f"[{name}]") + 1 :]
        keys = {line.split(" = ", 1)[0] for line in body[: next((i for i, v in enumerate(body) if not v), len(body))]}
        comments = field_comments(cls)
        assert {f for f in cls.__dataclass_fields__} <= keys, name
        assert set(comments) == set(cls.__dataclass_fields__), name  # every field's comment, continued lines too
    assert "ways = 7  # N classes per training task" in lines
    assert "test_settings = [[5, 1], [20, 5]]" in text and "scale = 5.0  # an option of protonet" in lines
    assert '# distance = "euclidean"' in lines  # the algorithm's other options, at their defaults
    cfg = load_config("protonet-quick", overrides)
    assert fastadapt.config_from_dict(tomllib.loads(text)).to_dict() == cfg.to_dict()
    assert cfg.data.options == {
        "note": 'a "quoted" \\\\ value'
    }  # a TOML literal string: two backslashes, written back escaped


def test_train_help_names_the_sections_and_the_config_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for section in ("data", "model", "algorithm", "optim", "eval", "run"):
        assert f"[{section}]" in out
    assert "fastadapt config PRESET" in out


def test_exit_statuses_are_documented_and_kept(monkeypatch, capsys):
    for doc in (cli.__doc__, (ROOT / "README.md").read_text()):
        assert re.search(
            r"Exit status: 0 done[;,] 2 a\s+usage, config, data or file error.*130 interrupted", doc, re.S
        ), doc[:80]

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_list", interrupted)
    assert cli.main(["list"]) == 130
    assert cli.main(["no-such-command"]) == 2
    assert capsys.readouterr().err.count("fastadapt: error:") == 1


# 3. devices


def test_auto_is_the_default_device_and_picks_cuda_then_mps_then_cpu(monkeypatch):
    assert RunConfig().device == "auto" and load_config("protonet-quick").run.device == "auto"
    if not (CUDA or MPS):
        assert resolve_device("auto") == "cpu" and distributed.local_device("auto") == torch.device("cpu")
    check_device("auto")  # always available
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


@pytest.mark.skipif(CUDA, reason="CUDA is available")
def test_a_forced_cuda_device_is_a_one_line_error(capsys):
    with pytest.raises(ConfigError, match="run.device='cuda'"):
        check_device("cuda")
    assert cli.main(["train", "protonet-quick", "run.device=cuda", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastadapt: error: run.device='cuda'") and err.count("\n") == 1


TINY = [*helpers.SMOKE, "data.ways=5", "data.shots=1", "data.queries=2", "data.meta_batch=2", "run.threads=1"]
TINY.append("run.keep_freed_memory=false")


@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_is_on_during_the_run_and_restored_after(deterministic, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    seen = []
    cfg = load_config(
        "protonet-quick", [*TINY, f"run.deterministic={str(deterministic).lower()}", f"run.out={tmp_path / 'r'}"]
    )
    train(
        cfg,
        step_hook=lambda step: seen.append(
            (torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        ),
    )
    assert len(seen) == 2
    assert all(on == (deterministic or before) for on, _ in seen)
    if deterministic:
        assert all(ws == (workspace or ":4096:8") for _, ws in seen)
    assert torch.are_deterministic_algorithms_enabled() == before
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == workspace


# 4. DataLoader interop


@pytest.fixture(scope="module")
def small_omniglot() -> ClassDataset:
    return load_omniglot("vinyals", "test").subset(range(12), name="omniglot-12")


def _same(a: TaskBatch, b: TaskBatch) -> bool:
    return all(
        torch.equal(getattr(a, f), getattr(b, f)) for f in ("support_x", "support_y", "query_x", "query_y", "classes")
    )


def test_collate_tasks_joins_task_batches_in_order(small_omniglot):
    sampler = EpisodeSampler(small_omniglot, 3, 1, 2, seed=5)
    parts = [sampler.sample_tasks(0, 0, 2), sampler.sample_tasks(0, 2, 3)]
    joined = collate_tasks(parts)
    assert len(joined) == 5 and _same(joined, sampler.sample_tasks(0, 0, 5))
    with pytest.raises(TypeError, match="TaskBatch"):
        collate_tasks([parts[0], parts[1].task(0)])


def test_episode_dataset_gives_the_same_batches_with_and_without_workers(small_omniglot):
    sampler = EpisodeSampler(small_omniglot, 3, 1, 2, seed=7)
    ds = EpisodeDataset(sampler, steps=5, tasks_per_step=2, start_step=10)
    alone = list(DataLoader(ds, batch_size=None, num_workers=0))
    with (
        warnings.catch_warnings()
    ):  # Python >= 3.12 warns about fork() in a process with threads; not what is tested here
        warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
        workers = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(alone) == len(workers) == len(ds) == 5
    for s, (a, w) in enumerate(zip(alone, workers, strict=True)):
        assert isinstance(w, TaskBatch) and len(w) == 2
        assert _same(a, w) and _same(a, sampler.sample_tasks(10 + s, 0, 2))
    assert not _same(alone[0], alone[1])  # steps differ
    (everything,) = list(DataLoader(ds, batch_size=5, collate_fn=collate_tasks))
    assert _same(everything, TaskBatch.cat(alone))
