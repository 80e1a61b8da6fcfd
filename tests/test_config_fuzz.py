"""A property-based fuzz of the command line's parser, validator and builders (``fastadapt train ... --dry-run``):
no input gives a traceback; every failure is one line with exit status 2."""

from __future__ import annotations

import contextlib
import io
import json
import math
import typing

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastadapt
from fastadapt.cli import main as cli_main
from fastadapt.config import SECTIONS, algorithm_signature
from fastadapt.config import preflight as cost
from fastadapt.core.registry import ALGORITHMS

FUZZ_SOURCE = "fuzz-patterns"


def fuzz_patterns(request):
    """12 classes of 6 random 1x16x16 patterns; another set per part (cheap: the fuzz builds it often)."""
    g = torch.Generator().manual_seed(len(request.part))
    x = torch.rand(72, 1, 16, 16, generator=g)
    return fastadapt.ClassDataset.from_arrays(x, torch.arange(12).repeat_interleave(6), name=f"fuzz-{request.part}")


def section_key_types() -> dict[str, type]:
    """Every key of the five sections and the type of its value."""
    return {
        f"{section}.{name}": typing.get_origin(tp) or tp
        for section, cls in SECTIONS.items()
        for name, tp in typing.get_type_hints(cls).items()
    }


def option_types(algorithm: str) -> dict[str, type]:
    """An algorithm's options and the type of each (int when the default is None)."""
    return {
        f"algorithm.{name}": type(p.default) if p.default not in (None, p.empty) else int
        for name, p in algorithm_signature(algorithm).items()
    }


SECTION_KEYS = section_key_types()
ALGORITHM_NAMES = sorted(ALGORITHMS.available())
NAMES = [
    "",
    "sinusoid",
    "folder:",
    "folder:/nonexistent",
    FUZZ_SOURCE,
    "conv4",
    "mlp",
    "flatten",
    *ALGORITHM_NAMES,
    "cpu",
    "cuda",
    "cuda:1",
    "mps",
    "meta",
    "step",
    "cosine",
    "linear",
    "sgd",
    "adamw",
    "head",
    "encoder",
    "none",
    "alphabet",
    "dataset",
    "lake",
    "train",
    "val",
    "test",
    "x.y:z",
    "fastadapt.nn:conv4",
    "euclidean",
    "lstm",
    "chunks",
    "vmap",
    "loop",
]  # not omniglot: seconds a build


def toml_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def toml_float(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else repr(x)


wild_scalars = st.one_of(
    st.integers().map(str),
    st.sampled_from([-1, 2**31, 2**63 - 1, 2**63, 2**64, 2**70, 10**400]).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(toml_float),
    st.sampled_from(["true", "false"]),
    st.sampled_from(NAMES).map(toml_string),
    st.text(max_size=8).map(toml_string),
)
wild_values = st.recursive(
    wild_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=6,
)
PLAUSIBLE = {  # values of the key's type, mostly in range: the example goes on to build the data, model and algorithm
    int: st.one_of(st.integers(0, 8), st.integers(-1, 80)).map(str),
    float: st.one_of(st.floats(0, 2).map(toml_float), st.sampled_from(["0.5", "1e-3", "nan", "inf", "-1.0", "1e300"])),
    bool: st.sampled_from(["true", "false"]),
    str: st.sampled_from(NAMES).map(toml_string),
    tuple: st.lists(st.integers(1, 6).map(str), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    dict: st.sampled_from(["{}", "{ width = 4 }", "{ nope = 1 }"]),
}


@st.composite
def override_lists(draw) -> list[str]:
    """0-3 overrides, most of a real key (of the sections, or of the algorithm drawn first) with a value of its type;
    some with any value, some of a made-up key, some not an override at all."""
    algorithm = draw(st.sampled_from([None, *ALGORITHM_NAMES]))
    types = {**SECTION_KEYS, **option_types(algorithm or "protonet")}
    keys = sorted(types)
    out = [f"algorithm.name={toml_string(algorithm)}"] if algorithm else []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 9))
        if kind <= 6:
            key = draw(st.sampled_from(keys))
            out.append(f"{key}={draw(PLAUSIBLE.get(types[key], wild_values))}")
        elif kind == 7:
            out.append(f"{draw(st.sampled_from(keys))}={draw(wild_values)}")
        elif kind == 8:
            out.append(f"{draw(st.sampled_from(keys))}={draw(st.text(max_size=10))}")  # not TOML: taken as a string
        else:
            out.append(
                draw(
                    st.one_of(
                        st.tuples(st.sampled_from(keys).map(lambda k: k + "z"), wild_values).map("=".join),
                        st.tuples(st.from_regex(r"[a-z]{1,6}\.[a-z_]{1,8}", fullmatch=True), wild_values).map("=".join),
                        st.text(max_size=12),
                    )
                )
            )
    return out


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    """A small config on a cheap registered source; the cost check sees 256 MiB, so no example allocates much.

    The fuzz runs ``fastadapt train BASE OVERRIDES --dry-run``: the command line's parser, the config's
    validation, the device and run-folder checks, building the data, model and algorithm, and the cost
    check; it trains and writes nothing. ``omniglot`` is left out of the names drawn (converting it
    takes seconds; the other tests cover it).
    """
    fastadapt.register_task_source(FUZZ_SOURCE, fuzz_patterns, replace=True)
    path = tmp_path_factory.mktemp("fuzz") / "base.toml"
    path.write_text(
        f'[data]\ndataset = "{FUZZ_SOURCE}"\nways = 3\nshots = 1\nqueries = 2\nmeta_batch = 2\nimage_size = 16\n'
        '[model]\nname = "conv4"\nhidden = 4\n[algorithm]\nname = "protonet"\n'
        "[eval]\nval_every = 2\nval_episodes = 4\ntest_episodes = 4\nbatch = 2\n"
        f'[run]\nout = "{path.parent / "run"}"\nprogress = false\n'
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forward passes: one thread is 5x faster than two that spin on a busy machine
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cost, "available_memory", lambda device="cpu": 256 << 20)
            mp.delenv("FASTADAPT_DEBUG", raising=False)
            yield path
    finally:
        torch.set_num_threads(threads)


@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(override_lists())
def fuzz_property(base, extra):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["train", str(base), *extra, "--dry-run"])
    text = err.getvalue()
    if code == 0:
        assert text == "" and "nothing written" in out.getvalue(), (extra, text)
    else:
        assert code == 2, (extra, code, text)
        assert text.startswith("fastadapt: error: ") and text.count("\n") == 1 and "Traceback" not in text, (
            extra,
            text,
        )
    assert not (base.parent / "run").exists()


def test_fuzzed_overrides_exit_0_or_one_line_exit_2_and_never_a_traceback(fuzz_base):
    fuzz_property(fuzz_base)
