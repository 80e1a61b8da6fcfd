"""``optim.task_chunk = "auto"`` and ``run.memory_budget``: the chunk planned from the preflight estimate, decided in
one place, recorded in the run's provenance, giving the whole batch's gradient; and the estimate against the
measured peak memory of every registered algorithm on a small setting of its preset."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.config import load_config, preflight
from fastadapt.config.preflight import memory_budget, plan_task_chunk, resolve_task_chunk
from fastadapt.config.schema import Config, OptimConfig
from fastadapt.training.accumulate import meta_gradient
from fastadapt.training.loop import train
from helpers import TINY, assert_same_grads, conv4, grads, images

MB = 10**6


def test_auto_is_the_default_of_the_library_and_of_every_preset():
    assert OptimConfig().task_chunk == "auto" and Config().optim.task_chunk == "auto"
    from fastadapt.config.toml import preset_names

    chunks = {name: load_config(name).optim.task_chunk for name in preset_names()}
    assert chunks and all(v == "auto" for v in chunks.values()), {k: v for k, v in chunks.items() if v != "auto"}


def test_plan_takes_the_whole_batch_when_it_fits_else_the_fewest_even_chunks_that_fit():
    assert plan_task_chunk(100, 32, 50, 10_000) == 0  # 3250 bytes fit
    assert plan_task_chunk(100, 32, 50, None) == 0  # nothing known: nothing planned
    assert plan_task_chunk(100, 32, 50, 1050) == 8  # 10 tasks fit: 4 chunks of 8, not 10 + 10 + 10 + 2
    assert plan_task_chunk(100, 32, 50, 2050) == 16  # 20 fit: 2 chunks of 16
    assert plan_task_chunk(100, 32, 50, 120) == 1  # not even one fits: one task at a time (the check then refuses)
    for budget in range(150, 3300, 37):  # never above what fits, never more chunks than needed
        k = plan_task_chunk(100, 32, 50, budget)
        fits = max(1, (budget - 50) // 100)
        assert k == 0 if fits >= 32 else (1 <= k <= fits and -(-32 // k) == -(-32 // fits))


def test_the_budget_is_the_setting_else_half_of_what_the_process_may_take(monkeypatch, tmp_path):
    assert memory_budget(load_config("protonet-quick", ["run.memory_budget=300"])) == 300 * MB
    monkeypatch.setattr(preflight, "available_memory", lambda device="cpu": 8_000 * MB)
    assert memory_budget(load_config("protonet-quick")) == 4_000 * MB == preflight.BUDGET_SHARE * 8_000 * MB
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("2000000000\n")
    usage.write_text("500000000\n")
    monkeypatch.setattr(preflight, "CGROUP_FILES", ((str(limit), str(usage)),))
    assert preflight.cgroup_free() == 1_500_000_000
    limit.write_text("max\n")
    assert preflight.cgroup_free() is None


def test_cgroup_limit_lowers_the_memory_available(monkeypatch, tmp_path):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("1000000000\n")
    usage.write_text("400000000\n")
    monkeypatch.setattr(preflight, "CGROUP_FILES", ((str(limit), str(usage)),))
    assert preflight.available_memory("cpu") == 600_000_000  # a container's limit, below MemAvailable


def maml_cfg(*extra: str) -> Config:
    return load_config("maml-omniglot-5w1s", ["model.hidden=8", "data.meta_batch=5", *extra])


def test_auto_resolves_by_the_path_and_the_budget():
    batch = images(0, tasks=5, side=28, dtype=torch.float32)
    model = conv4(side=28, hidden=8).float()
    looped = MAML(model, inner_lr=0.4)  # images on the CPU: tasks in a Python loop
    assert resolve_task_chunk(maml_cfg(), batch, model, looped) == 1  # a chunk of 1 costs no speed there
    vmapped = MAML(model, inner_lr=0.4, execution="vmap")
    assert resolve_task_chunk(maml_cfg(), batch, model, vmapped) == 0  # the whole batch fits half the memory
    one = preflight._estimate(maml_cfg(), batch, model, 1)
    tight = (one.parameter_bytes + 2.5 * one.step_bytes) / MB  # two tasks fit, not three
    assert resolve_task_chunk(maml_cfg(f"run.memory_budget={tight}"), batch, model, vmapped) == 2  # 2 + 2 + 1
    assert resolve_task_chunk(maml_cfg("optim.task_chunk=3"), batch, model, vmapped) == 3  # a number is kept
    protonet = ProtoNet(conv4(out=None, side=28, hidden=8).float())  # the whole meta-batch through BatchNorm
    cfg = load_config("protonet-quick", ["run.memory_budget=0.001"])
    assert resolve_task_chunk(cfg, batch, protonet.model, protonet) == 0  # chunks would change its statistics


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_the_planned_chunk_gives_the_gradient_of_the_whole_batch(execution):
    """A budget that fits two of five tasks: the resolved chunk (2) back-propagated chunk by chunk equals one pass
    (float64, 1e-9), for MAML mapping its tasks in a loop and with vmap."""
    batch, model = images(1, tasks=5), conv4()
    whole = MAML(model, inner_lr=0.3, inner_steps=2, execution=execution)
    cfg = maml_cfg()
    one = preflight._estimate(cfg, batch, model, 1)
    budget = (one.parameter_bytes + 2.5 * one.step_bytes) / MB
    chunk = resolve_task_chunk(maml_cfg(f"run.memory_budget={budget}"), batch, model, whole)
    assert chunk == 2
    chunked = copy.deepcopy(whole)
    meta_gradient(whole, batch, 0)
    meta_gradient(chunked, batch, chunk)
    assert_same_grads(grads(whole), grads(chunked))


def test_the_trainer_resolves_auto_once_and_records_it_with_the_machine(tmp_path):
    cfg = load_config(
        "maml-omniglot-5w1s",
        [
            *TINY,
            "model.hidden=8",
            "data.meta_batch=4",
            "eval.test_episodes=0",
            f"run.out={tmp_path}",
            "run.precision='auto'",
        ],
    )
    train(cfg)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["optim"]["task_chunk"] == "auto" and written["run"]["precision"] == "auto"  # what was asked
    resolved = written["provenance"]["resolved"]
    assert resolved["optim.task_chunk"] == ["auto", 1]  # MAML on images: tasks one at a time
    assert resolved["run.precision"][0] == "auto" and resolved["run.precision"][1] in ("fp32", "bf16")
    assert resolved["memory_budget_bytes"] > 0 and resolved["estimated_peak_bytes"] > 0
    cpu = written["provenance"]["hardware"]["cpu"]
    assert cpu["model"] and isinstance(cpu["flags"], list)
    assert resolved["run.precision"][1] == ("bf16" if cpu["bf16_native"] else "fp32")


def test_protonet_evaluation_estimate_counts_one_episode_at_a_time():
    """ProtoNets predict one task at a time: the batch's images and one episode's activations, not eval.batch
    episodes' activations (the overstatement docs/RELIABILITY.md named)."""
    cfg = load_config("protonet-omniglot-5w1s", ["model.hidden=8", "eval.batch=20"])
    batch = images(0, tasks=2, side=28, dtype=torch.float32)
    model = conv4(out=None, side=28, hidden=8).float()
    e = preflight.estimate_cost(cfg, batch, model)
    per_episode = 5 * (1 + 15)
    one_episode = 5 * (1 * e.forward_bytes + 15 * e.forward_bytes)
    assert e.eval_bytes == 20 * per_episode * 28 * 28 * 4 + one_episode
    assert e.eval_bytes < 20 * one_episode / 2  # the old formula held every episode's activations


def test_an_algorithm_that_frees_each_task_holds_one_task_whatever_the_chunk():
    """iMAML (and Reptile) free a task's graph before the next: the step holds one task's query and support passes
    and one task's backward buffers, the same for a chunk of 1, of 2 and the whole batch; Reptile runs no query pass,
    and its support passes are ``inner_batch`` examples."""
    batch = images(0, tasks=5, side=28, dtype=torch.float32)
    model = conv4(side=28, hidden=8).float()
    cfg = load_config("imaml-omniglot-5w1s", ["model.hidden=8", "data.meta_batch=5", "data.queries=3"])
    steps = {preflight._estimate(cfg, batch, model, chunk).step_bytes for chunk in (0, 1, 2)}
    e = preflight._estimate(cfg, batch, model, 0)
    assert steps == {(e.activation_bytes + e.forward_bytes) * 5 * (3 + 1)}
    reptile = load_config("reptile-omniglot-5w1s", ["model.hidden=8", "data.meta_batch=5", "data.shots=1"])
    r = preflight._estimate(reptile, batch, model, 0)
    assert r.step_bytes == (r.activation_bytes + r.forward_bytes) * 25  # inner_batch = 25, no query pass


def test_a_single_forward_loss_is_measured_with_its_comparator():
    """Relation Networks' step is their own forward on one task (the encoder's maps and the relation module's pairs,
    which the model's forward does not make) times the tasks, more than the model's activations of the images."""
    from fastadapt.algorithms.relation import RelationNet

    batch = images(0, tasks=3, side=28, dtype=torch.float32)
    algo = RelationNet(conv4(out=None, side=28, hidden=8).float())
    shape = ["data.ways=3", "data.shots=2", "data.queries=2"]  # the batch's
    cfg = load_config("relation-omniglot-5w1s", ["model.hidden=8", "data.meta_batch=3", *shape])
    e = preflight._estimate(cfg, batch, algo.model, 0, algo)
    one = preflight.forward_held_bytes(algo, batch)
    pairs = 3 * 2 * 3 * (2 * 8) * 7 * 7 * 4  # [N*Q, N, 2C, 7, 7] float32: blocks 3 and 4 are not pooled
    assert e.step_bytes == 3 * one
    assert one > e.activation_bytes * 3 * (2 + 2) + pairs
    assert preflight._estimate(cfg, batch, algo.model, 0).step_bytes < e.step_bytes  # the class alone: the model's


# --- the estimate against the measured peak ------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    import torch
    from fastadapt.config import load_config
    from fastadapt.config.build import build_algorithm, build_optimizer, probe_batch, task_sources, train_classes
    from fastadapt.config.build import train_domains
    from fastadapt.config.preflight import estimate_cost
    from fastadapt.eval import evaluate
    from fastadapt.training.accumulate import meta_gradient
    from fastadapt.training.resolve import resolve_auto
    from fastadapt.training.testing import evaluated

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    torch.manual_seed(0)
    cfg = load_config(sys.argv[1], sys.argv[2:])
    sources = task_sources(cfg)
    probe = probe_batch(sources, cfg)
    algo = build_algorithm(cfg, probe, num_classes=train_classes(sources), domain_sizes=train_domains(sources))
    cfg, _ = resolve_auto(cfg, probe, algo, cfg.data.meta_batch, "cpu")
    est = estimate_cost(cfg, probe, algo.model, algo)
    optimizer, _ = build_optimizer(cfg, algo.parameters())
    batch = sources.train.sample_tasks(0, 0, cfg.data.meta_batch)
    source = next(iter(sources.tests.values()))
    episodes = list(source.fixed(cfg.eval.batch, cfg.eval.batch))
    weights = sum(p.numel() * p.element_size() for p in algo.parameters())
    x = probe.support_x[0, :1] if hasattr(probe, "support_x") else None
    if x is not None:  # one example through the model and back: torch's one-off buffers are not the run's
        try:
            sum(t.sum() for t in [algo.model(x)] if isinstance(t, torch.Tensor)).backward()
        except Exception:
            pass
        algo.zero_grad(set_to_none=True)
    start = rss()
    if os.environ["PHASE"] == "step":
        algo.train()
        meta_gradient(algo, batch, cfg.optim.task_chunk)
        optimizer.step()
    else:
        evaluate(evaluated(cfg, algo), episodes, cfg.eval.level)
    with open("/proc/self/status") as f:  # VmHWM: ru_maxrss would carry the parent's (pytest's) peak across exec
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"estimate": est.peak_bytes - weights, "measured": peak - start, "step": est.step_bytes,
                      "eval": est.eval_bytes, "chunk": cfg.optim.task_chunk}))
    """
)

SMALL = ["data.meta_batch=4", "eval.batch=10"]
LOOPED = ["data.ways=20", "data.queries=15"]  # "auto" takes one task a chunk: a task large enough (about 400 MB) that
# torch's one-off allocations of a first step (20-40 MB, varying from run to run) do not decide the ratio
PRESETS = {  # every registered algorithm on images, on a small setting of a preset of it (RL's maml-rl and grbal:
    # an environment's tasks, no image batch to estimate; ntm: sequences, no TaskBatch of images)
    "maml": ("maml-omniglot-5w1s", LOOPED),
    "fomaml": ("fomaml-omniglot-5w1s", LOOPED),
    "metasgd": ("metasgd-omniglot-5w1s", LOOPED),
    "anil": ("anil-omniglot-5w1s", LOOPED),
    "protomaml": ("protomaml-omniglot-5w1s", LOOPED),
    "alfa": ("alfa-omniglot-5w1s", LOOPED),
    "reptile": ("reptile-omniglot-5w1s", ["data.ways=20"]),
    "imaml": ("imaml-omniglot-5w1s", LOOPED),
    "protonet": ("protonet-omniglot-5w5s", []),
    "matching": ("matching-omniglot-5w5s", ["data.ways=20"]),  # 800 images a step, as LOOPED: about 700 MB
    "relation": ("relation-omniglot-5w1s", []),
    "siamese": ("siamese-omniglot-20w1s", ["data.queries=9"]),  # 800 images a step (at 160, the 20-40 MB of a
    # first step's one-off allocations moved the ratio from 0.54 to 0.82 between runs)
    "baseline": ("baseline-omniglot", []),
    "linear_probe": ("linear-probe-omniglot", []),
    "meta_lstm": ("meta-lstm-omniglot-5w1s", []),
    "mann": ("mann-omniglot", []),
}
OFF = {  # estimate / measured peak beyond +-25 % (measured 2026-12-07; strict: a fix must remove its entry)
    "mann": "the estimate (the controller's activations, 2 MB) is below the weights: measured 608 MB in a step and "
    "the same in an evaluation batch without a graph, while what meta_loss's forward leaves alive is 20 MB: a "
    "transient of the sequence core, not a graph, that none of the declared facts models",
}


REPEATS = 2  # processes per phase; the highest peak is kept


def measure(preset: str, extra: list[str]) -> dict[str, float]:
    """The estimate (less the weights, held before) and the measured peak growth of a training step and of an
    evaluation batch, each in a fresh process (one process's allocator would carry the step's freed memory into the
    evaluation); ``measured`` is the larger. Each phase runs in ``REPEATS`` processes and keeps the highest peak: the
    allocator's reuse of freed pages only ever lowers a process's peak (Reptile's evaluation peak ranged over 0.77-1.30
    of the estimate from run to run in one process each)."""
    found: dict[str, dict] = {}
    for phase in ("step", "eval"):
        for _ in range(REPEATS):
            cmd = [sys.executable, "-c", CHILD, preset, *SMALL, *extra]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PHASE": phase}
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
            assert out.returncode == 0, out.stderr[-2000:]
            run = json.loads(out.stdout.strip().splitlines()[-1])
            if phase not in found or run["measured"] > found[phase]["measured"]:
                found[phase] = run
    return found["step"] | {
        "measured_step": found["step"]["measured"],
        "measured_eval": found["eval"]["measured"],
        "measured": max(found["step"]["measured"], found["eval"]["measured"]),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=OFF[n])) if n in OFF else n for n in sorted(PRESETS)],
)
def test_the_estimate_is_within_a_quarter_of_the_measured_peak(name):
    """Peak resident memory (``VmHWM``; ``ru_maxrss`` would carry pytest's own peak into the child) of a fresh
    process over what it held before one training step (chunked as "auto" plans it, with the optimizer's step), and
    of another over one evaluation batch, the larger against the estimate's peak less the weights (already held):
    within +-25 %."""
    preset, extra = PRESETS[name]
    found = measure(preset, extra)
    ratio = found["estimate"] / found["measured"]
    print(f"\n{name}: estimate / measured {ratio:.2f}", json.dumps(found))  # shown with pytest -s
    assert 0.75 <= ratio <= 1.25, found | {"ratio": ratio}


def test_meta_gradient_from_python_plans_too():
    """``meta_gradient(algo, batch)`` without a config: MAML on images (tasks in a loop) back-propagates a task at a
    time with the one-pass gradient (float64, 1e-9); ProtoNets with BatchNorm stay one pass."""
    batch = images(2, tasks=3)
    whole = MAML(conv4(), inner_lr=0.3, inner_steps=2)
    planned = copy.deepcopy(whole)
    calls = []
    original = planned.meta_loss
    planned.meta_loss = lambda b: calls.append(len(b)) or original(b)
    meta_gradient(whole, batch, 0)
    meta_gradient(planned, batch)
    assert calls == [1, 1, 1]
    assert_same_grads(grads(whole), grads(planned))
    protonet = ProtoNet(conv4(out=None))
    seen = []
    encode = protonet.meta_loss
    protonet.meta_loss = lambda b: seen.append(len(b)) or encode(b)
    meta_gradient(protonet, batch)
    assert seen == [3]
