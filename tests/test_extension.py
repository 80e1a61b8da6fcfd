"""The extension surface: a user's task source, model and algorithm, added from outside the package,
train, resume and evaluate through ``fastadapt.train`` and through the command line; broken plug-ins
are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt.cli import main as cli_main
from fastadapt.config import config_from_dict, load_config, preset_names
from fastadapt.config.build import build_algorithm, probe_batch, task_sources, train_classes, train_domains
from fastadapt.core.errors import ConfigError
from fastadapt.core.registry import ALGORITHMS, MODELS, TASK_SOURCES
from helpers import PRESET_OF, with_package_marks

# A plug-in as a user writes it, in a module of their own: a task source (Gaussian blobs, 12 classes),
# a model (a small MLP over any input shape) and an algorithm (nearest class mean with a learnt temperature).
PLUGIN = '''
import torch
import torch.nn.functional as F
from torch import nn

import fastadapt
from fastadapt import ClassDataset, MetaOutput


def make_blobs(request):
    """12 classes of 8-d Gaussian blobs, 20 examples each; another draw per part."""
    part = {"train": 0, "val": 1, "test": 2}[request.part]
    g = torch.Generator().manual_seed(part + int(request.options.get("offset", 0)))
    centers = torch.randn(12, 8, generator=g) * 2
    x = centers.repeat_interleave(20, 0) + torch.randn(240, 8, generator=g)
    return ClassDataset.from_arrays(x, torch.arange(12).repeat_interleave(20), name=f"blobs-{request.part}")


class TinyNet(nn.Module):
    def __init__(self, input_shape, out_features=None, width=16):
        super().__init__()
        n = 1
        for s in input_shape:
            n *= s
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n, width), nn.ReLU(), nn.Linear(width, out_features or width))

    def forward(self, x):
        return self.net(x)


def class_means(z, y, ways):
    onehot = F.one_hot(y, ways).to(z.dtype)
    return onehot.transpose(-1, -2) @ z / onehot.sum(-2).unsqueeze(-1)


class NearestMean(nn.Module):
    """Nearest class mean with a learnt inverse temperature."""

    needs_head = False

    def __init__(self, model, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.log_t = nn.Parameter(torch.tensor(float(temperature)).log())

    def _logits(self, sx, sy, qx, ways):
        t, m = sx.shape[:2]
        zs = self.model(sx.flatten(0, 1)).view(t, m, -1)
        zq = self.model(qx.flatten(0, 1)).view(t, qx.shape[1], -1)
        return -self.log_t.exp() * torch.cdist(zq, class_means(zs, sy, ways)) ** 2

    def meta_loss(self, batch):
        logits = self._logits(batch.support_x, batch.support_y, batch.query_x, batch.ways)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        acc = float((logits.argmax(-1) == batch.query_y).float().mean())
        return MetaOutput(loss, {"loss": float(loss.detach()), "acc": acc})

    def adapt(self, support_x, support_y):
        ways = int(support_y.max()) + 1
        return lambda qx: self._logits(support_x[None], support_y[None], qx[None], ways)[0]

    def predict(self, batch):
        with torch.no_grad():
            return self._logits(batch.support_x, batch.support_y, batch.query_x, batch.ways)


fastadapt.register_task_source("blobs", make_blobs)
fastadapt.register_model("tinynet", TinyNet)
fastadapt.register_algorithm("nearest-mean", NearestMean)
'''

TINY = {
    "data": {
        "dataset": "blobs",
        "train_part": "train",
        "val_part": "val",
        "test_part": "test",
        "ways": 3,
        "shots": 2,
        "queries": 3,
        "meta_batch": 2,
    },
    "model": {"name": "tinynet", "options": {"width": 12}},
    "algorithm": {"name": "nearest-mean", "temperature": 0.5},
    "optim": {"steps": 6, "lr": 0.01},
    "eval": {"val_every": 3, "val_episodes": 4, "test_episodes": 10, "batch": 5},
    "run": {"checkpoint_every": 3, "progress": False, "threads": 1},
}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plug-in module ``toyplug`` on sys.path and imported (its entries removed afterwards)."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "toyplug.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    import toyplug  # noqa: F401

    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("toyplug", None)
    TASK_SOURCES.unregister("blobs")
    MODELS.unregister("tinynet")
    ALGORITHMS.unregister("nearest-mean")


def tiny_config(out: Path, **sections) -> fastadapt.Config:
    raw = json.loads(json.dumps(TINY))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    raw["run"]["out"] = str(out)
    return config_from_dict(raw)


def params(algo: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in algo.state_dict().items()}


def test_a_plugin_trains_resumes_and_evaluates_through_fastadapt_train(plugin, tmp_path):
    whole = fastadapt.train(tiny_config(tmp_path / "whole"))
    assert whole.steps == 6 and whole.tests["3w2s"].episodes == 10
    half = tiny_config(tmp_path / "halves", optim={"steps": 6})
    stopped = fastadapt.train(half, step_hook=lambda step: step == 3 and os.kill(os.getpid(), 2))  # SIGINT after step 3
    assert stopped.interrupted and stopped.steps == 3
    resumed = fastadapt.train(half)
    assert resumed.steps == 6
    a, b = fastadapt.load_run(tmp_path / "whole"), fastadapt.load_run(tmp_path / "halves")
    assert a.weights == "best.pt" and type(a.algorithm).__name__ == "NearestMean"
    pa, pb = params(a.algorithm), params(b.algorithm)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)  # resume is bit-exact
    assert whole.tests["3w2s"].scores == resumed.tests["3w2s"].scores
    task = task_sources(a.config).tests["3w2s"].sample_tasks(0, 0, 1).task(0)
    logits = a.algorithm.adapt(task.support_x, task.support_y)(task.query_x)
    assert logits.shape == (9, 3) and torch.isfinite(logits).all()
    prov = json.loads((tmp_path / "whole" / "config.json").read_text())["provenance"]
    assert (
        prov["fastadapt"] == fastadapt.__version__
        and prov["torch"] == torch.__version__
        and prov["python"].count(".") == 2
    )
    assert prov["task_shapes"]["support_x"] == [6, 8]


def test_a_users_module_and_task_sources_train_from_python(plugin, tmp_path):
    import toyplug

    from fastadapt.config.build import SourceRequest

    data = {part: toyplug.make_blobs(SourceRequest(part, 3, 2, 3, 0)) for part in ("train", "val", "test")}
    net = toyplug.TinyNet((8,), None, width=10)
    initial = net.net[1].weight.detach().clone()
    cfg = tiny_config(
        tmp_path / "py", data={"dataset": "omniglot"}, model={"name": "conv4", "options": {}}
    )  # both replaced below
    result = fastadapt.train(cfg, model=net, tasks=data)
    assert result.steps == 6 and set(result.tests) == {"3w2s"} and result.best_val is not None
    assert not torch.equal(net.net[1].weight, initial)  # the user's module itself was trained
    with pytest.raises(fastadapt.FastAdaptError, match="trained with a model given in Python"):
        fastadapt.load_run(tmp_path / "py")
    assert cli_main(["eval", str(tmp_path / "py")]) == 2  # the CLI has neither the module nor the tasks
    run = fastadapt.load_run(tmp_path / "py", model=toyplug.TinyNet((8,), None, width=10))
    assert torch.equal(run.algorithm.model.net[1].weight, net.net[1].weight)


def run_cli(args: list[str], cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "fastadapt.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def write_toml(path: Path, raw: dict) -> Path:
    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            inline = (
                "{ " + ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items()) + " }" if isinstance(v, dict) else ""
            )
            lines.append(f"{k} = {inline or json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("how", ["imports", "targets"])
def test_a_plugin_trains_resumes_and_evaluates_through_the_cli(plugin, tmp_path, how):
    raw = json.loads(json.dumps(TINY))
    if how == "imports":
        raw["run"]["imports"] = ["toyplug"]
    else:  # no registration needed: the config names the objects
        raw["data"].pop("dataset")
        raw["data"]["target"] = "toyplug:make_blobs"
        raw["model"] = {"target": "toyplug:TinyNet", "options": {"width": 12}}
        raw["algorithm"] = {"target": "toyplug:NearestMean", "temperature": 0.5}
    raw["optim"]["steps"] = 3
    cfg = write_toml(tmp_path / "toy.toml", raw)
    run = tmp_path / "run"
    first = run_cli(["train", str(cfg), f"run.out={run}"], tmp_path, plugin)
    assert first.returncode == 0, first.stderr
    assert json.loads((run / "results.json").read_text())["steps"] == 3
    second = run_cli(["train", str(cfg), f"run.out={run}", "optim.steps=6"], tmp_path, plugin)  # resumes at step 3
    assert second.returncode == 0, second.stderr
    steps = [
        r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    ev = run_cli(["eval", str(run), "eval.test_episodes=5"], tmp_path, plugin)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((run / "evals" / "3w2s__eval.test_episodes=5.json").read_text())["episodes"] == 5


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and proc.stderr.startswith("fastadapt: error: ")
    ), proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


BROKEN = '''
import torch
from torch import nn
from fastadapt import TaskBatch


class SevenOut(nn.Module):
    def __init__(self, input_shape):
        super().__init__()
        self.lin = nn.Linear(int(torch.tensor(input_shape).prod()), 7)

    def forward(self, x):
        return self.lin(x.flatten(1))


class Short:
    """A task source whose support sets hold one example too few."""
    ways, shots, queries = 5, 1, 2

    def sample_tasks(self, step, start, n):
        return TaskBatch(torch.zeros(n, 4, 1, 28, 28), torch.zeros(n, 4, dtype=torch.long),
                         torch.zeros(n, 10, 1, 28, 28), torch.zeros(n, 10, dtype=torch.long))

    def fixed(self, n, batch_size=10):
        yield self.sample_tasks(-1, 0, n)


def short(request):
    return Short()


def not_a_module(input_shape):
    return 3
'''


def test_broken_plugins_are_one_line_errors_with_exit_2(tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN)
    base = ["train", "maml-omniglot-5w1s", f"run.out={tmp_path / 'r'}", "data.meta_batch=1", "run.progress=false"]
    one_line_error(
        run_cli([*base, 'model.target="nowhere.nets:Net"'], tmp_path, tmp_path), "module 'nowhere' not found"
    )
    one_line_error(
        run_cli([*base, 'model.target="broken:Missing"'], tmp_path, tmp_path), "broken has no attribute 'Missing'"
    )
    one_line_error(
        run_cli([*base, 'model.target="broken:SevenOut"'], tmp_path, tmp_path),
        "returned 7 outputs per input; maml expects 5",
    )
    one_line_error(
        run_cli([*base, 'model.target="broken:not_a_module"'], tmp_path, tmp_path),
        "returned int; expected an nn.Module",
    )
    one_line_error(
        run_cli([*base, 'data.target="broken:short"'], tmp_path, tmp_path),
        "task source broken:short: support_x has leading shape [1, 4], expected [1, 5]",
    )
    one_line_error(
        run_cli([*base, "model.options={ depth = 3 }"], tmp_path, tmp_path),
        "model.options.depth",
        "takes no argument 'depth'",
    )
    one_line_error(run_cli([*base, 'algorithm.name="nope"'], tmp_path, tmp_path), "unknown algorithm 'nope'")
    assert not (tmp_path / "r").exists()  # nothing was written


def test_registering_a_built_in_name_or_a_taken_name_is_refused():
    with pytest.raises(ConfigError, match="model 'conv4' is built in; register yours under another name"):
        fastadapt.register_model("conv4", lambda input_shape: torch.nn.Flatten())
    with pytest.raises(ConfigError, match="algorithm 'maml' is built in"):
        fastadapt.register_algorithm("maml", fastadapt.ProtoNet)
    with pytest.raises(ConfigError, match="name 'Bad:name' is invalid"):
        fastadapt.register_task_source("Bad:name", lambda request: None)

    def first(request):
        return None

    fastadapt.register_task_source("once", first)
    try:
        with pytest.raises(ConfigError, match="task source 'once' is already registered"):
            fastadapt.register_task_source("once", lambda request: None)
        fastadapt.register_task_source("once", first)  # the same object again: accepted (a module imported twice)
    finally:
        TASK_SOURCES.unregister("once")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=p.marks) for n, p in zip(ALGORITHMS.names(), with_package_marks(list(PRESET_OF.values())))],
)
def test_every_registered_algorithm_trains_one_step_adapts_and_predicts(name):
    preset = PRESET_OF[name]
    assert preset is not None, f"algorithm {name} has no shipped preset"
    overrides = ["data.meta_batch=2", "data.queries=2", "data.test_queries=2"]
    if load_config(preset).model.name == "conv4":
        overrides.append("model.hidden=8")
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    sources = task_sources(cfg)
    algo = build_algorithm(
        cfg, probe_batch(sources, cfg), num_classes=train_classes(sources), domain_sizes=train_domains(sources)
    )
    opt = torch.optim.SGD([p for p in algo.parameters() if p.requires_grad], lr=1e-3)
    before = {k: v.detach().clone() for k, v in algo.named_parameters()}
    out = algo.meta_loss(sources.train.sample_tasks(0, 0, 2))
    assert torch.isfinite(out.loss) and out.loss.requires_grad and set(out.metrics) >= {"loss"}
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in algo.named_parameters()), (
        f"{name}: one step changed no parameter"
    )
    test = next(iter(sources.tests.values()))
    batch = test.sample_tasks(0, 0, 2)
    algo.eval()
    if isinstance(
        batch, fastadapt.EnvTasks
    ):  # reinforcement learning: a task is an environment; predict gives each task's return
        policy = algo.adapt(batch.select(slice(0, 1)))
        assert policy(torch.zeros(3, *batch.observation_shape)).shape == (3, batch.action_size)
        pred = algo.predict(batch)
        assert pred.shape == (2,) and torch.isfinite(pred).all()
        return
    task = batch.task(0)
    logits = algo.adapt(task.support_x, task.support_y)(task.query_x)
    assert logits.shape[0] == task.query_x.shape[0] and torch.isfinite(logits).all()
    pred = algo.predict(batch)
    assert pred.shape[:2] == batch.query_y.shape[:2] and torch.isfinite(pred).all()


@pytest.mark.parametrize("preset", with_package_marks(preset_names()))
def test_every_preset_builds_its_task_sources_model_and_algorithm(preset):
    cfg = load_config(preset, ["data.meta_batch=1"])
    sources = task_sources(cfg)
    batch = probe_batch(sources, cfg)
    algo = build_algorithm(cfg, batch, num_classes=train_classes(sources), domain_sizes=train_domains(sources))
    assert sources.tests and all(hasattr(s, "fixed") for s in sources.tests.values())
    assert (sources.val is not None) == bool(cfg.data.val_part and cfg.eval.val_every)
    assert sum(p.numel() for p in algo.parameters()) > 0


def image_folder(root: Path, mode: str, size: int = 20) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, classes in (("train", 6), ("val", 4), ("test", 4)):
        for c in range(classes):
            d = root / part / f"class{c}"
            d.mkdir(parents=True)
            for i in range(5):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("mode,channels", [("RGB", 3), ("L", 1)])
def test_protonet_quick_trains_and_evaluates_on_an_image_folder_through_the_cli(tmp_path, capsys, mode, channels):
    root = image_folder(tmp_path / "imgs", mode)
    run = tmp_path / "run"
    args = [
        "train",
        "protonet-quick",
        f"data.dataset=folder:{root}",
        "data.ways=3",
        "data.test_ways=3",
        "data.queries=2",
        "data.test_queries=2",
        "data.meta_batch=2",
        "optim.steps=2",
        "eval.val_every=1",
        "eval.val_episodes=2",
        "eval.test_episodes=2",
        "model.hidden=8",
        f"run.out={run}",
        "run.progress=false",
    ]
    assert cli_main(args) == 0, capsys.readouterr().err
    shapes = json.loads((run / "config.json").read_text())["provenance"]["task_shapes"]
    assert shapes["support_x"] == [3, channels, 28, 28]
    assert cli_main(["eval", str(run), "data.test_shots=2"]) == 0
    assert (run / "evals" / "3w2s__data.test_shots=2.json").is_file()
    grey = run.parent / "grey"
    assert cli_main([*args[:-2], "data.channels=1", f"run.out={grey}", "run.progress=false"]) == 0
    assert json.loads((grey / "config.json").read_text())["provenance"]["task_shapes"]["support_x"] == [3, 1, 28, 28]


def test_a_folder_without_its_parts_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "flat" / "a").mkdir(parents=True)
    assert (
        cli_main(["train", "protonet-quick", f"data.dataset=folder:{tmp_path / 'flat'}", f"run.out={tmp_path / 'r'}"])
        == 2
    )
    err = capsys.readouterr().err
    assert "has no train/ subfolder" in err and err.count("\n") == 1
    assert cli_main(["train", "protonet-quick", "data.dataset=folder:", f"run.out={tmp_path / 'r'}"]) == 2
    assert "names no folder" in capsys.readouterr().err


def test_channel_conversion_follows_one_rule():
    from fastadapt.data import conform_images

    rgb = torch.tensor([[[[255]], [[0]], [[0]]], [[[0]], [[255]], [[0]]]], dtype=torch.uint8)  # a red and a green pixel
    data = fastadapt.ClassDataset(rgb, torch.tensor([0, 1, 2]), ("r", "g"))
    grey = conform_images(data, None, 1).data
    assert grey.shape == (2, 1, 1, 1) and grey.flatten().tolist() == [
        76,
        150,
    ]  # ITU-R 601 luma: 0.299 * 255, 0.587 * 255
    back = conform_images(fastadapt.ClassDataset(grey, data.offsets, data.names), None, 3).data
    assert back.shape == (2, 3, 1, 1) and back[:, 0].equal(back[:, 2])
    assert conform_images(data, None, 0) is data and conform_images(data, 1, 3) is data


SCRIPT_ALLOCATOR = textwrap.dedent('''
    import ctypes, os, sys
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def freed_memory_returned():
        """Whether glibc gives a freed 256 MiB block back to the system (its default) or keeps it."""
        n = 256 << 20
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        before = rss()
        libc.free(p)
        return before - rss() > n // 2

    what = sys.argv[1]
    if what == "import":
        import fastadapt, fastadapt.cli, fastadapt.report  # noqa: F401
        import fastadapt.training.loop, fastadapt.training.testing  # noqa: F401
    else:
        from fastadapt.cli import main
        code = main(["train", "protonet-quick", "optim.steps=1", "eval.val_every=0", "eval.test_episodes=0",
                     "model.hidden=4", "run.progress=false", "run.out=" + sys.argv[2], *sys.argv[3:]])
        assert code == 0
    print("returned" if freed_memory_returned() else "kept")
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_import_leaves_the_allocator_alone_and_the_cli_applies_it(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT_ALLOCATOR)

    def probe(*args: str) -> str:
        out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    assert probe("import") == "returned"
    assert probe("cli", str(tmp_path / "a")) == "kept"
    assert probe("cli", str(tmp_path / "b"), "run.keep_freed_memory=false") == "returned"
