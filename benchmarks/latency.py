"""Real-time latency of adapting to one task and predicting, per algorithm, on one CPU thread.

    python benchmarks/latency.py                       # every algorithm, 1000 timed calls each (run on a quiet machine)
    python benchmarks/latency.py --quick               # a smoke: 20 calls after 3 warm-ups (numbers not a result)
    python benchmarks/latency.py --algorithms protonet,maml --modes eager,inference,torchscript,compile
    python benchmarks/latency.py --out benchmarks/results/latency.json --markdown benchmarks/results/latency.md
    python benchmarks/latency.py load RUN_DIR --seconds 60 --clients 4   # the web app's predict endpoint under load

One call is ``predictor = algo.adapt(support_x, support_y); predictor(query_x)`` for a 5-way 1-shot or
5-shot Omniglot-shaped task (1x28x28; MANN 1x20x20) with 1 or 100 queries, on the shipped preset's
model at full size (Conv4 with 64 filters, 32 for the meta-LSTM) and its evaluation settings, except
MAML, which takes 5 inner steps (the target's setting). Weights are the preset's initialisation:
latency does not depend on training (Baseline's and the linear probe's per-task fitting run a fixed
number of steps). ``torch.set_num_threads(1)``; ``--warmup`` calls first; then ``--calls`` timed calls,
each timed on its own (p50/p95/p99 in ms). By default glibc keeps freed memory for reuse, as the
``fastadapt`` command and the app do (``--allocator default`` leaves glibc alone: every call then faults
its activations back page by page, which costs ProtoNets about 2 ms of its 5).

Modes, where they apply: ``eager`` (the model as ``build_algorithm`` lays it out, as the app and ``fastadapt adapt``
load it: ``run.memory_format``, NCHW by default); ``nchw`` (the weights NCHW whatever the config chose);
``inference`` (``torch.inference_mode`` around the call for the learners whose adaptation takes no gradient, around
the prediction only for the others);
``channels_last`` (the model's weights and the call's inputs in NHWC, oneDNN's preferred layout; the
inputs' conversion is timed); ``torchscript`` (ProtoNet: its encoder traced once, outside the timing); ``compile`` (ProtoNet:
``torch.compile`` of its encoder, compiled during warm-up; slow to compile, so not in the defaults).

Ceiling: the best of 5 timings of a 1024x1024 fp32 matmul on one thread gives the machine's fp32
matmul rate; each row states the FLOPs of one call (``torch.utils.flop_counter``: matmuls and
convolutions, forward and backward) divided by its p50, as a % of that rate.

Targets (this CPU, one thread): ProtoNet 5-way 1-shot adapt + predict p95 <= 5 ms; MAML with 5 inner
steps p95 <= 40 ms (both with one query).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from timing import timed

import fastadapt
from fastadapt.config import load_config
from fastadapt.config.build import build_algorithm
from fastadapt.core.episodes import TaskBatch

PRESETS = {  # algorithm -> (preset, overrides): the evaluation settings that shipped
    "protonet": ("protonet-omniglot-5w1s", []),
    "matching": ("matching-omniglot-5w1s", []),
    "matching-fce": ("matching-fce-omniglot-5w1s", []),
    "maml": ("maml-omniglot-5w1s", ["algorithm.inner_steps_eval=5"]),
    "fomaml": ("fomaml-omniglot-5w1s", []),
    "metasgd": ("metasgd-omniglot-5w1s", []),
    "anil": ("anil-omniglot-5w1s", []),
    "reptile": ("reptile-omniglot-5w1s", []),
    "meta_lstm": ("meta-lstm-omniglot-5w1s", []),
    "mann": (
        "mann-omniglot",
        ["algorithm.key_strength=false"],
    ),  # as measured in benchmarks/results (before the preset's key strength)
    "baseline": ("baseline-omniglot", []),
    "linear_probe": ("linear-probe-omniglot", []),
}
TARGETS = {("protonet", 1, 1): 5.0, ("maml", 1, 1): 40.0}  # (algorithm, shots, queries) -> p95 target in ms
GRADIENT_FREE_ADAPT = {
    "protonet",
    "matching",
    "matching-fce",
    "mann",
}  # adapt takes no gradient: inference mode covers it


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    preset, overrides = PRESETS[name]
    cfg = load_config(preset, overrides)
    side = cfg.data.image_size or 28
    shape = (1, side, side)
    ways = 5
    probe = TaskBatch(
        torch.zeros(1, ways, *shape),
        torch.arange(ways).unsqueeze(0),
        torch.zeros(1, ways, *shape),
        torch.arange(ways).unsqueeze(0),
        torch.arange(ways).unsqueeze(0),
    )
    torch.manual_seed(0)
    algo = build_algorithm(cfg, probe, num_classes=64, check_memory=False)
    return algo.eval(), shape


def task(
    shape: tuple[int, ...], shots: int, queries: int, ways: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.rand(ways * shots, *shape, generator=g),
        torch.arange(ways).repeat_interleave(shots),
        torch.rand(queries, *shape, generator=g),
    )


def variant(algo: torch.nn.Module, name: str, mode: str, example: torch.Tensor) -> torch.nn.Module | None:
    """The algorithm for a mode (None where the mode does not apply)."""
    if mode in ("eager", "inference"):
        return algo
    if mode == "nchw":  # the weights NCHW whatever run.memory_format chose
        return copy.deepcopy(algo).to(memory_format=torch.contiguous_format)
    if mode == "channels_last":  # NHWC weights and inputs: oneDNN's preferred layout for these small convolutions
        return copy.deepcopy(algo).to(memory_format=torch.channels_last)
    if name != "protonet":
        return None
    from fastadapt.algorithms.protonet import ProtoNet

    if mode == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ProtoNet(torch.jit.trace(algo.model, (example,), check_trace=False), algo.distance, algo.scale)
    if mode == "compile":
        return ProtoNet(torch.compile(algo.model, dynamic=True), algo.distance, algo.scale)
    raise SystemExit(f"unknown mode {mode!r}")


def one_call(
    algo: torch.nn.Module, name: str, mode: str, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor
) -> torch.Tensor:
    if mode == "channels_last" and sx.dim() == 4:  # the conversion is part of the call
        sx, qx = sx.contiguous(memory_format=torch.channels_last), qx.contiguous(memory_format=torch.channels_last)
    whole = mode == "inference" and name in GRADIENT_FREE_ADAPT
    with torch.inference_mode() if whole else contextlib.nullcontext():
        predictor = algo.adapt(sx, sy)
        with torch.inference_mode() if mode == "inference" else torch.no_grad():
            return predictor(qx)


def flops_of(algo: torch.nn.Module, name: str, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        one_call(algo, name, "eager", sx, sy, qx)
    return float(counter.get_total_flops())


def matmul_ceiling(n: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul FLOP/s on this thread: the best of ``repeats`` timings of an n x n x n product."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:  # noqa: ANN001
    return timed(fn)[0]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure(
    names: list[str], modes: list[str], calls: int, warmup: int, shots_list: list[int], queries_list: list[int]
) -> list[dict]:
    ceiling = matmul_ceiling()
    print(f"fp32 matmul ceiling on one thread: {ceiling / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for name in names:
        base, shape = build(name)
        for shots in shots_list:
            for queries in queries_list:
                sx, sy, qx = task(shape, shots, queries)
                flops = flops_of(base, name, sx, sy, qx)
                for mode in modes:
                    algo = variant(base, name, mode, sx)
                    if algo is None:
                        continue
                    for _ in range(warmup):
                        one_call(algo, name, mode, sx, sy, qx)
                    times = [
                        1e3 * timed(functools.partial(one_call, algo, name, mode, sx, sy, qx))[0] for _ in range(calls)
                    ]
                    p50, p95, p99 = (percentile(times, q) for q in (50, 95, 99))
                    target = TARGETS.get((name, shots, queries))
                    row = {
                        "algorithm": name,
                        "shots": shots,
                        "queries": queries,
                        "mode": mode,
                        "calls": calls,
                        "p50_ms": p50,
                        "p95_ms": p95,
                        "p99_ms": p99,
                        "mean_ms": statistics.fmean(times),
                        "gflop": flops / 1e9,
                        "ceiling_pct": 100 * flops / (p50 / 1e3) / ceiling,
                        "target_p95_ms": target,
                        "meets_target": None if target is None else p95 <= target,
                    }
                    rows.append(row)
                    print(
                        f"{name:13s} 5w{shots}s q={queries:<3d} {mode:13s} p50 {p50:8.2f}  p95 {p95:8.2f}  p99 {p99:8.2f} ms  "
                        f"{flops / 1e9:7.3f} GFLOP  {row['ceiling_pct']:5.1f}% of ceiling"
                        + (
                            ""
                            if target is None
                            else f"  target p95 <= {target:g} ms: {'met' if row['meets_target'] else 'MISSED'}"
                        ),
                        flush=True,
                    )
    return rows


def markdown(rows: list[dict], command: str, ceiling_note: str) -> str:
    lines = [
        f"`{command}` ({ceiling_note})",
        "",
        "| algorithm | task | queries | mode | p50 ms | p95 ms | p99 ms | GFLOP/call | % fp32 matmul ceiling | target (p95) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = (
            ""
            if r["target_p95_ms"] is None
            else f"<= {r['target_p95_ms']:g} ms: {'met' if r['meets_target'] else '**missed**'}"
        )
        lines.append(
            f"| {r['algorithm']} | 5-way {r['shots']}-shot | {r['queries']} | {r['mode']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['gflop']:.3f} | {r['ceiling_pct']:.1f} | {target} |"
        )
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> list[str]:
    """The fastest mode (lowest p95) of each algorithm and setting, with eager beside it: the table docs/SEE_AND_STEER.md shows."""
    best: dict[tuple, dict] = {}
    eager: dict[tuple, dict] = {}
    for r in rows:
        key = (r["algorithm"], r["shots"], r["queries"])
        if key not in best or r["p95_ms"] < best[key]["p95_ms"]:
            best[key] = r
        if r["mode"] == "eager":
            eager[key] = r
    lines = [
        "| algorithm | task | queries | eager p50 / p95 ms | fastest mode | its p50 / p95 / p99 ms | % fp32 matmul ceiling | target (p95) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in best.items():
        e = eager.get(key)
        target = (
            ""
            if r["target_p95_ms"] is None
            else f"<= {r['target_p95_ms']:g} ms: {'met' if r['meets_target'] else '**missed**'}"
        )
        plain = "-" if e is None else f"{e['p50_ms']:.2f} / {e['p95_ms']:.2f}"
        lines.append(
            f"| {r['algorithm']} | 5-way {r['shots']}-shot | {r['queries']} | {plain} | {r['mode']} | "
            f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f} / {r['p99_ms']:.2f} | {r['ceiling_pct']:.0f} | {target} |"
        )
    return lines


def load_main(args: argparse.Namespace) -> int:
    """Start ``fastadapt serve`` on 127.0.0.1, teach it 3 classes from its pool, load its predict endpoint."""
    import os
    import subprocess
    import tempfile

    from fastadapt.apps.inputs import encode_png
    from fastadapt.apps.loadtest import load_test, multipart
    from fastadapt.apps.serve import free_port
    from fastadapt.apps.teach import load_pool
    from fastadapt.runs import load_run

    run = load_run(args.run_dir)
    shape = tuple(run.provenance["task_shapes"]["support_x"][1:])
    pool = load_pool("omniglot", shape)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastadapt.cli", "serve", args.run_dir, "--port", str(port), "--dir", folder],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            print(proc.stdout.readline().strip(), flush=True)
            import http.client

            def post(path: str, body: bytes, ctype: str) -> dict:
                for _ in range(300):
                    con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    try:
                        con.request(
                            "POST", path, body=body, headers={"Content-Type": ctype, "Content-Length": str(len(body))}
                        )
                        return json.loads(con.getresponse().read())
                    except OSError:
                        time.sleep(0.2)
                    finally:
                        con.close()
                raise SystemExit("the server did not answer")

            for k in range(3):
                cid = post("/api/classes", json.dumps({"name": f"class {k}"}).encode(), "application/json")["id"]
                first = next(int(i) for i in pool.proposable() if int(pool.y[i]) == k)
                post(f"/api/classes/{cid}/examples", *multipart("file", "x.png", encode_png(pool.x[first])))
            path = "/api/predict?attribution=none" + ("&fresh=true" if args.adapt_each else "")
            result = load_test(
                f"http://127.0.0.1:{port}/",
                encode_png(pool.x[int(pool.proposable()[-1])]),
                args.seconds,
                args.clients,
                path,
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            proc.stdout.close()
    print(f"POST {path}: {result.summary()}")
    for e in result.errors[:5]:
        print(f"  error: {e}")
    return 0 if not result.errors else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "load":
        lp = argparse.ArgumentParser(
            prog="latency.py load", description="the web app's predict endpoint under a bounded load"
        )
        lp.add_argument("run_dir")
        lp.add_argument("--seconds", type=float, default=60.0)
        lp.add_argument("--clients", type=int, default=4)
        lp.add_argument("--adapt-each", action="store_true", help="adapt again on every request (?fresh=true)")
        return load_main(lp.parse_args(argv[1:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algorithms", default=",".join(PRESETS))
    p.add_argument("--modes", default="eager,nchw,inference,channels_last,torchscript")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--shots", default="1,5")
    p.add_argument("--queries", default="1,100")
    p.add_argument("--quick", action="store_true", help="20 calls after 3 warm-ups: a smoke, not a result")
    p.add_argument("--out", help="write the rows as JSON")
    p.add_argument("--markdown", help="write the table as Markdown")
    p.add_argument(
        "--allocator",
        choices=("keep", "default"),
        default="keep",
        help="keep: glibc keeps freed memory for reuse, as the fastadapt command and app do (fastadapt.keep_freed_memory); "
        "default: glibc's defaults",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.calls, a.warmup = 20, 3
    torch.set_num_threads(1)
    kept = a.allocator == "keep" and fastadapt.keep_freed_memory()
    names = [n for n in a.algorithms.split(",") if n]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown algorithm(s) {unknown}; choose from {', '.join(PRESETS)}")
    rows = measure(
        names,
        a.modes.split(","),
        a.calls,
        a.warmup,
        [int(s) for s in a.shots.split(",")],
        [int(q) for q in a.queries.split(",")],
    )
    command = "python benchmarks/latency.py " + " ".join(argv)
    load = os.getloadavg()
    note = (
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, "
        f"allocator: {'glibc keeps freed memory' if kept else 'glibc defaults'}, load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if a.out:
        Path(a.out).write_text(
            json.dumps({"command": command, "torch": torch.__version__, "note": note, "rows": rows}, indent=1) + "\n"
        )
    if a.markdown:
        Path(a.markdown).write_text(markdown(rows, command.strip(), note))
    missed = [r for r in rows if r["meets_target"] is False]
    for r in missed:
        print(
            f"target missed: {r['algorithm']} 5w{r['shots']}s q={r['queries']} {r['mode']}: p95 {r['p95_ms']:.2f} ms > {r['target_p95_ms']:g} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
