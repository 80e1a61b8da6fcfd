"""Hardening: every failure a user or the machine can cause is one line ``fastadapt: error: ...``.

Exit code 2 (130 on an interrupt), no traceback unless ``FASTADAPT_DEBUG=1``; every numeric key's
range is checked (NaN and infinities refused); a configuration that cannot fit in memory is refused
before anything is allocated (``fastadapt.config.preflight``). The fuzz of the command line: test_config_fuzz.py.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import time
import typing

import pytest
import torch

from fastadapt.cli import main as cli_main
from fastadapt.config import RANGES, SECTIONS, load_config, preset_names
from fastadapt.config import preflight as cost
from fastadapt.config.models import build_model, head_width
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError
from fastadapt.core.registry import algorithm_class
from helpers import TINY

GiB = 1 << 30


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_nothing_written(out) -> None:
    """No config, metrics or checkpoint in ``out`` (the engine may have taken the folder's lock before the check)."""
    assert not out.exists() or not [p for p in out.rglob("*") if p.suffix in (".json", ".jsonl", ".pt")]


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert err.startswith("fastadapt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, err


@pytest.fixture
def memory_8gib(monkeypatch):
    """The cost check sees 8 GiB available, whatever this machine has (so the tests allocate nothing big)."""
    monkeypatch.setattr(cost, "available_memory", lambda device="cpu": 8 * GiB)


CUDA, MPS = torch.cuda.is_available(), torch.backends.mps.is_available()

# (preset, overrides, the key the message names); run through `fastadapt train` with a tiny config.
CASES = [
    ("protonet-quick", ["eval.test_settings=[[5]]"], "eval.test_settings"),
    ("protonet-quick", ["eval.test_settings=[[5, 1, 2]]"], "eval.test_settings"),
    ("protonet-quick", ["eval.test_settings=[[5, nan]]"], "eval.test_settings"),
    ("protonet-quick", ["run.device=nonsense"], "run.device"),
    pytest.param(
        "protonet-quick", ["run.device=cuda"], "run.device", marks=pytest.mark.skipif(CUDA, reason="CUDA is available")
    ),
    pytest.param(
        "protonet-quick",
        ["run.device='cuda:7'"],
        "run.device",
        marks=pytest.mark.skipif(CUDA and torch.cuda.device_count() > 7, reason="cuda:7 exists"),
    ),
    pytest.param(
        "protonet-quick", ["run.device=mps"], "run.device", marks=pytest.mark.skipif(MPS, reason="MPS is available")
    ),
    ("protonet-quick", ["model.name=mlp", "model.layers=[]"], "model.layers"),
    ("protonet-quick", ["model.name=mlp", "model.layers=[-3]"], "model.layers"),
    ("protonet-quick", ["optim.schedule=step", "optim.step_size=0"], "optim.step_size"),
    ("protonet-quick", ["optim.lr=1e300"], "optim.lr"),
    ("protonet-quick", ["optim.lr=nan"], "optim.lr"),
    ("protonet-quick", ["optim.lr=inf"], "optim.lr"),
    ("protonet-quick", [f"run.seed={2**70}"], "run.seed"),
    ("protonet-quick", ["run.seed=-1"], "run.seed"),
    ("protonet-quick", [f"eval.seed={2**70}"], "eval.seed"),
    ("protonet-quick", ["optim.optimizer=sgd", "optim.momentum=nan"], "optim.momentum"),
    ("protonet-quick", ["optim.optimizer=sgd", "optim.momentum=1.5"], "optim.momentum"),
    ("protonet-quick", ["optim.max_minutes=nan"], "optim.max_minutes"),
    ("protonet-quick", ["optim.max_minutes=inf"], "optim.max_minutes"),
    ("protonet-quick", ["optim.weight_decay=nan"], "optim.weight_decay"),
    ("protonet-quick", ["optim.schedule=step", "optim.gamma=-1"], "optim.gamma"),
    ("protonet-quick", ["optim.gamma=nan"], "optim.gamma"),
    ("protonet-quick", ["optim.clip_grad=nan"], "optim.clip_grad"),
    ("protonet-quick", ["optim.clip_grad=inf"], "optim.clip_grad"),
    ("protonet-quick", ["eval.level=nan"], "eval.level"),
    ("protonet-quick", ["eval.finetune_lr=inf"], "eval.finetune_lr"),
    ("protonet-quick", ["run.dist_timeout_s=inf"], "run.dist_timeout_s"),
    ("protonet-quick", ["run.threads=100000"], "run.threads"),
    ("protonet-quick", ["data.image_size=1000000"], "data.image_size"),
    ("protonet-quick", ["model.hidden=1000000"], "model.hidden"),
    ("protonet-quick", ["optim.lr=" + "1" * 400], "optim.lr"),  # an integer too large for a float
    ("protonet-quick", ['run.out="a\\u0000b"'], "run.out"),  # a NUL character: no path can hold it
    ("protonet-quick", ["algorithm.scale=nan"], "algorithm.scale"),
    ("maml-omniglot-5w1s", ["algorithm.inner_lr=nan"], "algorithm.inner_lr"),
    ("maml-omniglot-5w1s", ["algorithm.inner_lr=inf"], "algorithm.inner_lr"),
    ("protonet-quick", ["data.dataset='folder:'"], "data.dataset"),
    ("protonet-quick", ["data.dataset=sinusoid"], "model.name"),  # conv4 on 1-d inputs
    ("protonet-quick", ["data.image_size=3"], "data.image_size"),  # too small for conv4's four poolings
    ("protonet-quick", ["data.ways=5000"], "ways"),  # more ways than the 4112 training classes
]


@pytest.mark.parametrize(("preset", "overrides", "key"), CASES)
def test_bad_input_is_one_line_naming_the_key_and_nothing_is_written(
    preset, overrides, key, tmp_path, capsys, memory_8gib
):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", preset, *TINY, f"run.out={out}", *overrides)
    assert_one_line_error(code, err, key)
    assert_nothing_written(out)


def test_a_toml_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes("[data]\nways = 5  # caf\u00e9\n".encode("latin-1"))
    code, _, err = run(capsys, "train", str(path))
    assert_one_line_error(code, err, str(path), "UTF-8")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["train"],
        ["train", "protonet-quick", "-x=1"],
        ["sample", "--tasks", "0", "--out", ""],
        ["train", "a" * 5000],
        ["train", "x\x00y.toml"],
    ],
)
def test_usage_errors_are_one_line(argv, capsys):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err)


def test_run_out_naming_an_existing_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("not a folder")
    for out in (file, file / "run"):
        code, _, err = run(capsys, "train", "protonet-quick", *TINY, f"run.out={out}")
        assert_one_line_error(code, err, "run.out", str(file))
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (errno.ENOSPC, ["no space left", "free space", "run.out"]),
        (errno.EROFS, ["read-only", "run.out"]),
        (errno.EACCES, ["permission denied", "permissions", "run.out"]),
        (errno.EIO, ["input/output error"]),
    ],
)
def test_os_errors_name_the_path_and_the_fix(number, words, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise OSError(number, "message from the system", "/runs/x/checkpoint.pt")

    monkeypatch.setattr("fastadapt.training.loop.train", fail)
    code, _, err = run(capsys, "train", "protonet-quick")
    assert_one_line_error(code, err, "/runs/x/checkpoint.pt", *words)


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate "
            "1234 bytes."
        ),
        RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes. Error code 12 "
            "(Cannot allocate memory)"
        ),
        torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)\nmore lines"
        ),
    ],
)
def test_out_of_memory_is_one_line_naming_what_to_lower(exc, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("fastadapt.training.loop.train", fail)
    code, _, err = run(capsys, "train", "protonet-quick")
    assert_one_line_error(code, err, "out of memory", "data.meta_batch", "data.ways", "data.image_size")


def test_an_unexpected_exception_stays_a_traceback(monkeypatch):
    def fail(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("fastadapt.training.loop.train", fail)
    with pytest.raises(ZeroDivisionError):
        cli_main(["train", "protonet-quick"])
    monkeypatch.setattr(
        "fastadapt.training.loop.train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug, not memory"))
    )
    with pytest.raises(RuntimeError, match="a bug"):
        cli_main(["train", "protonet-quick"])


def test_fastadapt_debug_gives_the_traceback(monkeypatch):
    monkeypatch.setenv("FASTADAPT_DEBUG", "1")
    with pytest.raises(ConfigError, match="data.ways=0"):
        cli_main(["train", "protonet-quick", "data.ways=0"])
    monkeypatch.setattr("fastadapt.training.loop.train", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        cli_main(["train", "protonet-quick"])


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["fastadapt.config.load_config", "fastadapt.cli.build_parser"])
def test_an_interrupt_during_start_up_exits_130_in_one_line(where, monkeypatch, capsys):
    monkeypatch.setattr(where, interrupt)
    code, _, err = run(capsys, "train", "protonet-quick")
    assert code == 130
    assert err.startswith("fastadapt: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_an_interrupt_with_fastadapt_debug_is_raised(monkeypatch):
    monkeypatch.setenv("FASTADAPT_DEBUG", "1")
    monkeypatch.setattr("fastadapt.config.load_config", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli_main(["train", "protonet-quick"])


# --- the range table ------------------------------------------------------------------------------


def numeric_fields() -> list[str]:
    out = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if hints[f.name] in (int, float)]
    return out


def test_every_numeric_key_has_a_range_and_every_default_is_in_it():
    assert set(numeric_fields()) <= set(RANGES), set(numeric_fields()) - set(RANGES)
    defaults = {f"{s}.{f.name}": getattr(cls(), f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    for key, rng in RANGES.items():
        assert rng.contains(defaults[key]), (key, defaults[key])


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_numeric_key_refuses_nan_infinity_and_values_beyond_its_range(key):
    section, name = key.split(".")
    is_float = typing.get_type_hints(SECTIONS[section])[name] is float
    rng = RANGES[key]
    bad = ["nan", "inf", "-inf"] if is_float else []
    bad += [str(rng.lo - 1) if not is_float else repr(rng.lo - 1.0)]
    if math.isfinite(rng.hi):
        bad.append(str(int(rng.hi) + 1) if not is_float else repr(rng.hi * 2 + 1))
    for value in bad:
        with pytest.raises(ConfigError, match=f"^{key}=") as e:
            load_config("protonet-quick", [f"{key}={value}"])
        assert "\n" not in str(e.value)


def test_a_float_algorithm_option_must_be_finite():
    with pytest.raises(ConfigError, match="^algorithm.forget_bias="):
        load_config("meta-lstm-omniglot-5w1s", ["algorithm.forget_bias=[4.0, nan]"])
    for preset, key in (
        ("protonet-quick", "scale"),
        ("reptile-omniglot-5w1s", "adam_beta2"),
        ("mann-omniglot", "gamma"),
    ):
        with pytest.raises(ConfigError, match=f"^algorithm.{key}=inf"):
            load_config(preset, [f"algorithm.{key}=inf"])


# --- the cost estimate ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["data.meta_batch=200000"], ["data.meta_batch", "data.ways"]),
        (["data.ways=4000"], ["data.meta_batch", "data.ways"]),
        (["eval.val_episodes=3000000", "eval.batch=3000000"], ["eval.batch"]),
        (["data.image_size=300", "data.meta_batch=32"], ["data.image_size"]),
    ],
)
def test_a_configuration_too_big_for_memory_is_refused_in_seconds_before_anything_is_allocated(
    overrides, keys, tmp_path, capsys, memory_8gib
):
    out = tmp_path / "run"
    start = time.perf_counter()
    code, _, err = run(
        capsys, "train", "protonet-quick", "optim.steps=1", "run.progress=false", f"run.out={out}", *overrides
    )
    assert time.perf_counter() - start < 20
    assert_one_line_error(code, err, "8.6 GB available", *keys)
    assert_nothing_written(out)


def synthetic_batch(cfg) -> TaskBatch:
    """One task shaped as the preset's data gives it, without loading the data (omniglot: 1 x S x S; sinusoid: 1-d)."""
    d = cfg.data
    if d.dataset.startswith("sinusoid"):
        return TaskBatch(
            torch.zeros(1, d.shots, 1),
            torch.zeros(1, d.shots, 1),
            torch.zeros(1, d.queries, 1),
            torch.zeros(1, d.queries, 1),
        )
    n = d.ways
    s = d.image_size
    return TaskBatch(
        torch.zeros(1, n * d.shots, 1, s, s),
        torch.arange(n).repeat_interleave(d.shots)[None],
        torch.zeros(1, n * d.queries, 1, s, s),
        torch.arange(n).repeat_interleave(d.queries)[None],
        torch.arange(n)[None],
    )


# environment tasks (reinforcement learning) have no images: build skips this estimate for them
# (tests/test_rl.py trains those presets);
# sequence tasks (copy, recall) are no images either: tests/test_ntm_engine.py trains those presets
IMAGE_OR_REGRESSION_PRESETS = [
    p for p in preset_names() if load_config(p).data.dataset not in ("nav2d", "pendulum-dynamics", "copy", "recall")
]


@pytest.mark.parametrize("preset", IMAGE_OR_REGRESSION_PRESETS)
def test_every_shipped_preset_is_accepted_with_10_gib(preset, monkeypatch):
    """The presets ran on a 24 GB machine; the largest estimate (20-way 5-shot evaluation batches of 50 episodes) is 8
    GB."""
    monkeypatch.setattr(cost, "available_memory", lambda device="cpu": 10 * GiB)
    cfg = load_config(preset)
    batch = synthetic_batch(cfg)
    model = build_model(cfg, tuple(batch.support_x.shape[2:]), head_width(cfg, algorithm_class(cfg.algorithm), batch))
    estimate = cost.check_cost(cfg, batch, model)
    assert 0 < estimate.peak_bytes < 10 * GiB, estimate.summary()
    assert estimate.images_per_step == cfg.data.meta_batch * cfg.data.ways * (cfg.data.shots + cfg.data.queries)


def test_the_estimate_counts_images_and_activations_by_its_formula():
    cfg = load_config("maml-omniglot-5w1s", ["model.hidden=4", "eval.batch=10", "optim.task_chunk=4"])
    batch = synthetic_batch(cfg)
    model = build_model(cfg, (1, 28, 28), 5)
    e = cost.estimate_cost(cfg, batch, model)
    # conv4, hidden 4, 28x28: 4 blocks of conv and BN (same size), a pool and a ReLU (pooled size); the head; the input
    per_example = 2 * 4 * (28 * 28 + 14 * 14 + 7 * 7 + 3 * 3) + 2 * 4 * (14 * 14 + 7 * 7 + 3 * 3 + 1) + 5 + 28 * 28
    assert e.activation_bytes == 4 * per_example
    assert e.images_per_step == 32 * 5 * (1 + 5)
    k = 1  # inner steps: the support set goes through the model k + 1 times, the query set once
    assert cfg.optim.task_chunk == 4  # 4 tasks back-propagated at a time: only their graphs are alive
    assert e.step_bytes == e.activation_bytes * 4 * 5 * (5 + 1 * (1 + 2 * k))  # second order: 2a a support pass
    whole = cost.estimate_cost(
        load_config("maml-omniglot-5w1s", ["model.hidden=4", "eval.batch=10", "optim.task_chunk=0"]), batch, model
    )
    assert whole.step_bytes == e.activation_bytes * 32 * 5 * (5 + 1 * (1 + 2 * k))
    assert e.forward_bytes == 4 * (2 * 4 * 28 * 28)  # the first block's BatchNorm (or ReLU): its input and output
    assert e.eval_images_per_batch == 10 * 5 * (1 + 15)
    # inner_steps_eval = 3: the support set adapted with gradients (2a), the queries without a graph (f)
    assert e.eval_bytes == 10 * 5 * (1 * 2 * e.activation_bytes + 15 * e.forward_bytes)
    assert e.eval_images == (cfg.eval.val_episodes + cfg.eval.test_episodes) * 5 * (1 + 15)
    n_params = sum(p.numel() for p in model.parameters())
    assert e.parameter_bytes == 4 * 4 * n_params


def test_the_estimate_is_cheap_for_conv4():
    cfg = load_config("protonet-omniglot-20w5s")
    batch = synthetic_batch(cfg)
    model = build_model(cfg, (1, 28, 28), None)
    cost.estimate_cost(cfg, batch, model)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        cost.estimate_cost(cfg, batch, model)
        times.append(time.perf_counter() - start)
    assert sorted(times)[2] < 0.25  # ~10-50 ms here; generous for a loaded machine


def test_a_model_too_big_for_memory_is_refused_before_its_weights_are_allocated(capsys, tmp_path, memory_8gib):
    code, _, err = run(capsys, "train", "protonet-quick", *TINY, "model.hidden=30000", f"run.out={tmp_path / 'run'}")
    assert_one_line_error(code, err, "model.hidden", "parameters")


def test_available_memory_reads_meminfo():
    have = cost.available_memory("cpu")
    assert have is None or have > 0


def test_dry_run_builds_and_estimates_but_writes_nothing(tmp_path, capsys, memory_8gib):
    out = tmp_path / "run"
    code, text, err = run(capsys, "train", "protonet-quick", *TINY, f"run.out={out}", "--dry-run")
    assert code == 0 and err == "", err
    assert "images per step" in text and "nothing written" in text
    assert not out.exists()
