"""Weights files: safetensors written and read without a dependency (checked against the safetensors
package), ``fastadapt export`` loaded back by ``load_run`` with identical outputs, and strict pretrained
weights (``model.weights``)."""

from __future__ import annotations

import json

import pytest
import torch

import fastadapt
from fastadapt.cli import main as cli_main
from fastadapt.config import load_config
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.nn import Conv4
from fastadapt.nn.weights import load_pretrained, read_safetensors, read_state_file, save_safetensors

TINY = [
    "data.ways=5",
    "data.shots=1",
    "data.queries=2",
    "data.meta_batch=2",
    "data.test_queries=2",
    "model.hidden=8",
    "optim.steps=2",
    "eval.val_every=0",
    "eval.test_episodes=0",
    "run.progress=false",
    "run.threads=1",
    "run.checkpoint_every=1",
]


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "h": torch.randn(5, generator=g).half(),
        "b": torch.randn(2, 2, generator=g).to(torch.bfloat16),
        "i": torch.arange(6, dtype=torch.int64).view(2, 3),
        "u": torch.tensor([0, 255], dtype=torch.uint8),
        "m": torch.tensor([True, False]),
        "s": torch.tensor(7.0),
        "e": torch.zeros(0, 3),
        "t": torch.randn(4, 6, generator=g).T,  # not contiguous
    }


def test_safetensors_round_trip_is_exact_and_the_safetensors_package_agrees_both_ways(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = _tensors()
    path = save_safetensors(tensors, tmp_path / "a.safetensors", {"step": "3"})
    mine, meta = read_safetensors(path)
    theirs = st.load_file(str(path))
    assert meta == {"step": "3"} and set(mine) == set(theirs) == set(tensors)
    for k, t in tensors.items():
        assert mine[k].dtype == theirs[k].dtype == t.dtype and mine[k].shape == t.shape
        assert torch.equal(mine[k], t) and torch.equal(theirs[k], t)
    st.save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "b.safetensors"), metadata={"x": "y"})
    back, meta = read_safetensors(tmp_path / "b.safetensors")
    assert meta == {"x": "y"} and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_a_damaged_safetensors_file_is_a_one_line_error(tmp_path):
    path = save_safetensors({"w": torch.ones(10)}, tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match="'w'.*truncated") as e:
        read_safetensors(path)
    assert "\n" not in str(e.value)
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(DataError, match="not a safetensors file"):
        read_safetensors(tmp_path / "x.safetensors")


def test_pretrained_weights_load_strictly_and_name_the_mismatched_key(tmp_path):
    torch.manual_seed(0)
    source = Conv4(1, None, hidden=8)
    save_safetensors(source.state_dict(), tmp_path / "enc.safetensors")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "enc.pt")
    for name in ("enc.safetensors", "enc.pt"):
        torch.manual_seed(1)
        target = Conv4(1, 5, hidden=8)  # a head the file does not have: left as initialised
        missing = load_pretrained(target, tmp_path / name)
        assert missing == ["head.weight", "head.bias"]
        x = torch.randn(3, 1, 28, 28)
        target.head = None
        assert torch.equal(target(x), source(x))
    with pytest.raises(
        ConfigError, match=r"'features.0.0.weight' has shape \[8, 1, 3, 3\] in the file and \[16, 1, 3, 3\]"
    ) as e:
        load_pretrained(Conv4(1, None, hidden=16), tmp_path / "enc.safetensors")
    assert "\n" not in str(e.value)
    save_safetensors({**source.state_dict(), "extra.w": torch.ones(1)}, tmp_path / "extra.safetensors")
    with pytest.raises(ConfigError, match="the file has 'extra.w', which the model lacks"):
        load_pretrained(Conv4(1, None, hidden=8), tmp_path / "extra.safetensors")
    part = {k: v for k, v in source.state_dict().items() if not k.startswith("features.3")}
    save_safetensors(part, tmp_path / "part.safetensors")
    with pytest.raises(ConfigError, match="the file has no 'features.3.0.weight'"):
        load_pretrained(Conv4(1, None, hidden=8), tmp_path / "part.safetensors")
    with pytest.raises(DataError, match="not found"):
        read_state_file(tmp_path / "nope.pt")


def test_model_weights_key_starts_training_from_the_file(tmp_path):
    torch.manual_seed(3)
    enc = Conv4(1, None, hidden=8)
    path = save_safetensors(enc.state_dict(), tmp_path / "enc.safetensors")
    cfg = load_config(
        "protonet-quick", [*TINY, f"model.weights={json.dumps(str(path))}", f"run.out={tmp_path / 'run'}"]
    )
    from fastadapt.config.build import build_algorithm

    algo = build_algorithm(cfg)
    assert all(torch.equal(algo.model.state_dict()[k], v) for k, v in enc.state_dict().items())
    bad = load_config(
        "protonet-quick",
        [*TINY, "model.hidden=16", f"model.weights={json.dumps(str(path))}", f"run.out={tmp_path / 'b'}"],
    )
    with pytest.raises(ConfigError, match="model.weights=.*'features.0.0.weight' has shape"):
        build_algorithm(bad)


def test_export_safetensors_loads_back_with_load_run_and_gives_identical_outputs(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = load_config("protonet-quick", [*TINY, f"run.out={run}"])
    fastadapt.train(cfg)
    assert cli_main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "exp")]) == 0
    assert "weights.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.json", "weights.safetensors"]
    st = pytest.importorskip("safetensors.torch")
    assert set(st.load_file(str(tmp_path / "exp" / "weights.safetensors"))) == set(
        fastadapt.load_run(run).algorithm.state_dict()
    )
    original, exported = fastadapt.load_run(run), fastadapt.load_run(tmp_path / "exp")
    assert exported.weights == "weights.safetensors" and exported.step == original.step == 2
    task = fastadapt.EpisodeSampler(fastadapt.load_omniglot("vinyals", "test"), 5, 1, 3, seed=9).sample(1).task(0)
    with torch.no_grad():
        a = original.algorithm.adapt(task.support_x, task.support_y)(task.query_x)
        b = exported.algorithm.adapt(task.support_x, task.support_y)(task.query_x)
    assert torch.equal(a, b)
    # the export's encoder starts another run (model.weights takes an exported run's file)
    enc = read_state_file(tmp_path / "exp" / "weights.safetensors")
    assert set(enc) == set(original.algorithm.model.state_dict())
    assert cli_main(["export", str(run), "--format", "torch"]) == 0
    state = torch.load(run / "export" / "weights.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in original.algorithm.state_dict().items())


def test_export_of_a_folder_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastadapt: error:") and err.count("\n") == 1
