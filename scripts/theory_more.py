"""Regenerate the rest of results/theory/: iMAML's CG error against iterations, the divergence boundary of MAML's
inner step size against the inner steps, similarity against transfer over Omniglot alphabet pairs, and the episode
analysis of ProtoNets.

    OMP_NUM_THREADS=1 python scripts/theory_more.py [--only cg divergence transfer protonet] [--out results/theory]

Each job writes its JSON and PNG (cg-error, divergence, transfer, protonet-omniglot-init/analysis) and adds its
summary to summary.json (keys "cg", "divergence", "transfer", "protonet"), with the CPU, the load average at its start
and its seconds. docs/THEORY.md quotes these files. iMAML's memory is benchmarks/imaml_memory.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from theory_measure import cpu_name  # noqa: E402

from fastadapt.runs.folder import write_json  # noqa: E402

F64 = torch.float64


# --- 1. the CG error of iMAML's implicit gradient ------------------------------------------------------------------


def cg_job(out: Path) -> dict:
    """A quadratic with a known spectrum and maml-sinusoid's ReLU MLP at an iMAML inner solution, float64."""
    from fastadapt.algorithms import inner
    from fastadapt.algorithms.base import task_loss
    from fastadapt.algorithms.imaml import proximal_descent
    from fastadapt.analysis.implicit import cg_error_curve
    from fastadapt.analysis.plots import plot_cg
    from fastadapt.analysis.runner import load_subject

    panels: dict[str, list[dict]] = {}
    # a quadratic 1/2 (phi - c)^T H (phi - c) whose I + H / lam has P eigenvalues evenly spread on [1, kappa]
    size, lam, g = 200, 1.0, torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=F64))
    c, phi, b = (torch.randn(size, generator=g, dtype=F64) for _ in range(3))
    rows = []
    for kappa in (10.0, 100.0, 1000.0):
        h = q @ torch.diag(lam * (kappa - 1) * torch.linspace(0, 1, size, dtype=F64)) @ q.T

        def quadratic(p, h=h):
            return 0.5 * (p["w"] - c) @ h @ (p["w"] - c)

        curve = cg_error_curve(quadratic, {"w": phi}, {"w": b}, lam, list(range(0, 121, 4)))
        rows.append({"label": f"kappa {kappa:g}", **asdict(curve)})
    panels[f"quadratic, P = {size}, eigenvalues of I + H/lam evenly spread"] = rows
    # maml-sinusoid's 1-40-40-1 ReLU MLP at initialization (run.seed 0), one task, phi* by 10 proximal steps at 0.01
    subject = load_subject("imaml-sinusoid", ["run.seed=0"])
    model = subject.model.double()
    batch = subject.tasks.sample_tasks(0, 0, 1).to(dtype=F64)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    theta = {k: v.detach() for k, v in inner.trainable_params(model).items()}

    def support(p):
        return task_loss(inner.call(model, p, sx), sy)

    rows = []
    for lam in (2.0, 5.0, 10.0, 50.0):
        star = proximal_descent(support, theta, lam, 0.01, 10)
        leaves = {k: v.clone().requires_grad_() for k, v in star.items()}
        found = torch.autograd.grad(task_loss(inner.call(model, leaves, qx), qy), list(leaves.values()))
        curve = cg_error_curve(support, star, dict(zip(leaves, found)), lam, list(range(0, 41, 2)))
        rows.append({"label": f"lam {lam:g}", **asdict(curve)})
    panels["sinusoid 1-40-40-1 ReLU MLP at phi* (1,761 weights)"] = rows
    plot_cg(panels, out / "cg-error.png")
    write_json(out / "cg-error.json", panels)
    return {
        title: [
            {k: r[k] for k in ("label", "kappa", "eig_min", "rate", "measured_rate", "distinct", "bound_holds")}
            | {"steps_to_1e-10": next((s for s, e in zip(r["steps"], r["errors"]) if e < 1e-10), None)}
            for r in rows
        ]
        for title, rows in panels.items()
    }


# --- 3. the divergence boundary of MAML's inner rate against the inner steps ---------------------------------------

STEPS_N = (1, 2, 4, 8, 16)
DIVERGENCE = {"outer_steps": 60, "meta_batch": 8, "held_out": 64, "outer_lr": 1e-2, "optimizer": "sgd"}


def divergence_job(out: Path) -> dict:
    """maml-sinusoid's 1-40-40-1 ReLU MLP (run.seed 0) in float64, the library's MAML (second order, vmap), N inner
    steps; for each N the largest inner rate whose 60-step SGD meta-training does not diverge."""
    import copy

    from fastadapt.algorithms.maml import MAML
    from fastadapt.analysis import loglog_slope
    from fastadapt.analysis.plots import plot_boundary
    from fastadapt.analysis.runner import load_subject, local_slopes
    from fastadapt.analysis.stability import largest_stable_rate, short_meta_training

    cfg = DIVERGENCE
    subject = load_subject("maml-sinusoid", ["run.seed=0"])
    base = subject.model.double()
    held = subject.tasks.sample_tasks(10**6, 0, cfg["held_out"]).to(dtype=F64)

    def tasks(step):
        return subject.tasks.sample_tasks(step, 0, cfg["meta_batch"]).to(dtype=F64)

    rows = []
    for n in STEPS_N:
        runs = {}

        def stable(a, n=n, runs=runs):
            def build(lr):
                return MAML(copy.deepcopy(base), inner_lr=lr, inner_steps=n, execution="vmap")

            r = runs[a] = short_meta_training(
                build, tasks, held, a, cfg["outer_steps"], cfg["outer_lr"], cfg["optimizer"]
            )
            return r.stable

        started = time.perf_counter()
        found = largest_stable_rate(stable, 1e-3, 10.0)
        rows.append(
            {
                "steps": n,
                "stable": found.stable,
                "unstable": found.unstable,
                "tried": [
                    {
                        "a": a,
                        "stable": ok,
                        "start": runs[a].start,
                        "final": runs[a].final,
                        "losses": len(runs[a].losses),
                    }
                    for a, ok in found.tried
                ],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    mid = [(r["stable"] * r["unstable"]) ** 0.5 for r in rows]
    record = {
        "title": "sinusoid MLP, MAML, 60 SGD steps (lr 0.01), float64",
        "settings": cfg | {"model": "1-40-40-1 ReLU (maml-sinusoid, run.seed 0)", "dtype": "float64"},
        "rows": rows,
        "slope": loglog_slope(list(STEPS_N), mid),
        "slope_largest_stable": loglog_slope(list(STEPS_N), [r["stable"] for r in rows]),
        "local_slopes": local_slopes(list(STEPS_N), mid),
    }
    write_json(out / "divergence.json", record)
    plot_boundary(record, out / "divergence.png")
    return {
        "boundary": {r["steps"]: [r["stable"], r["unstable"]] for r in rows},
        "slope": record["slope"],
        "slope_largest_stable": record["slope_largest_stable"],
        "local_slopes": record["local_slopes"],
        "settings": record["settings"],
    }


# --- 4. similarity against transfer over Omniglot alphabet pairs ---------------------------------------------------

ALPHABETS = ("Latin", "Greek", "Cyrillic", "Braille", "Korean", "Japanese_(hiragana)", "Bengali")
TRANSFER = {
    "characters": 20,  # the first 20 characters of each alphabet (the smallest chosen has 22): equal training data
    "hidden": 32,  # Conv4-32 embedding (ProtoNets), 28x28
    "steps": 300,  # Adam steps of meta-training on one alphabet
    "meta_batch": 4,
    "lr": 1e-3,
    "queries": 5,
    "episodes": 300,  # fixed 5-way 1-shot test episodes of each target alphabet
    "similarity_tasks": 16,  # tasks of each alphabet whose mean ProtoNets gradient at init is compared
}


def transfer_job(out: Path) -> dict:
    """ProtoNets (Conv4-32) at one seeded initialization, meta-trained for 300 steps on each of 7 background alphabets
    of Lake's split in turn and tested on 5-way 1-shot tasks of each other alphabet; the gain over the untrained
    network, against three similarities computed at the initialization."""
    from fastadapt.algorithms.protonet import ProtoNet
    from fastadapt.analysis import transfer as tr
    from fastadapt.data.omniglot import load_omniglot
    from fastadapt.data.sampler import EpisodeSampler, class_groups
    from fastadapt.nn import Conv4

    cfg = TRANSFER
    data = load_omniglot("lake", "background")
    groups = class_groups(data, "alphabet")
    subsets = {a: data.subset([c for c, g in enumerate(groups) if g == a][: cfg["characters"]], a) for a in ALPHABETS}
    samplers = {a: EpisodeSampler(d, 5, 1, cfg["queries"], seed=7) for a, d in subsets.items()}
    torch.manual_seed(0)
    init = ProtoNet(Conv4(1, None, cfg["hidden"], 28))
    initial = {k: v.clone() for k, v in init.state_dict().items()}

    def accuracy(algo, target):
        right = [
            (algo.predict(b).argmax(-1) == b.query_y).double().mean(1) for b in samplers[target].fixed(cfg["episodes"])
        ]
        return float(torch.cat(right).mean())

    # similarities at the initialization
    started = time.perf_counter()
    batches = {a: [s.sample_tasks(-2, i, 1) for i in range(cfg["similarity_tasks"])] for a, s in samplers.items()}
    means = {a: tr.mean_meta_gradient(init, bs) for a, bs in batches.items()}
    images = {a: d.data.float() / 255 for a, d in subsets.items()}
    pairs = [(a, b) for a in ALPHABETS for b in ALPHABETS if a != b]
    sims = {
        "gradient cosine at init": [tr.cosine(means[a], means[b]) for a, b in pairs],
        "random-feature embedding (minus distance)": [
            tr.embedding_similarity(init.model, images[a], images[b]) for a, b in pairs
        ],
        "mean-image cosine": [tr.pixel_similarity(images[a], images[b]) for a, b in pairs],
    }
    similarity_seconds = time.perf_counter() - started
    # transfer: train on each source alphabet from the same initialization, test on every other
    base = {b: accuracy(init, b) for b in ALPHABETS}
    acc, train_seconds = {}, {}
    for a in ALPHABETS:
        started = time.perf_counter()
        algo = ProtoNet(Conv4(1, None, cfg["hidden"], 28))
        algo.load_state_dict(initial)
        opt = torch.optim.Adam(algo.parameters(), lr=cfg["lr"])
        for step in range(cfg["steps"]):
            opt.zero_grad(set_to_none=True)
            algo.meta_loss(samplers[a].sample_tasks(step, 0, cfg["meta_batch"])).loss.backward()
            opt.step()
        train_seconds[a] = round(time.perf_counter() - started, 1)
        for b in ALPHABETS:
            acc[a, b] = accuracy(algo, b)
        print(
            json.dumps({"source": a, "seconds": train_seconds[a], "acc": {b: acc[a, b] for b in ALPHABETS}}), flush=True
        )
    gain = [acc[a, b] - base[b] for a, b in pairs]
    record = {
        "settings": cfg | {"alphabets": list(ALPHABETS), "split": "lake background", "algorithm": "protonet"},
        "pairs": [list(p) for p in pairs],
        "similarities": sims,
        "gain": gain,
        "accuracy": {f"{a} -> {b}": v for (a, b), v in acc.items()},
        "accuracy_at_init": base,
        "seconds": {"similarities": round(similarity_seconds, 1), "training": train_seconds},
    }
    return transfer_statistics(record, out)


def transfer_statistics(record: dict, out: Path) -> dict:
    """Spearman's rho of each similarity against the gain, with a bootstrap interval over the pairs and one over the
    alphabets; the same against the double-centred gain (each source's and each target's mean gain removed: what is
    left is about the pair) and with each alphabet left out in turn. Writes transfer.json and transfer.png."""
    from fastadapt.analysis import transfer as tr
    from fastadapt.analysis.plots import plot_transfer

    pairs = [tuple(p) for p in record["pairs"]]
    names = sorted({a for p in pairs for a in p})
    matrix = dict(zip(pairs, record["gain"]))
    row = {a: sum(v for (s, _), v in matrix.items() if s == a) / (len(names) - 1) for a in names}
    col = {b: sum(v for (_, t), v in matrix.items() if t == b) / (len(names) - 1) for b in names}
    gain = torch.tensor(record["gain"], dtype=F64)
    centred = torch.tensor([matrix[a, b] - row[a] - col[b] for a, b in pairs], dtype=F64)
    results = {}
    for name, values in record["similarities"].items():
        x = torch.tensor(values, dtype=F64)
        left_out = {}
        for drop in names:
            keep = [i for i, p in enumerate(pairs) if drop not in p]
            left_out[drop] = tr.spearman(x[keep], gain[keep])
        results[name] = {
            "rho_gain": tr.spearman(x, gain),
            "ci_gain_pairs": tr.bootstrap_ci(x, gain),
            "ci_gain_alphabets": tr.bootstrap_ci_items(x, gain, pairs),
            "rho_centred": tr.spearman(x, centred),
            "ci_centred_alphabets": tr.bootstrap_ci_items(x, centred, pairs),
            "rho_leave_one_alphabet_out": left_out,
        }
    record = record | {"gain_centred": centred.tolist(), "results": results}
    write_json(out / "transfer.json", record)
    plot_transfer(record, out / "transfer.png")
    return {"results": results, "settings": record["settings"], "mean_gain": float(gain.mean())}


def transfer_stats_job(out: Path) -> dict:
    """:func:`transfer_statistics` again from <out>/transfer.json (no training)."""
    return transfer_statistics(json.loads((out / "transfer.json").read_text()), out)


# --- 5. the episode analysis of ProtoNets ----------------------------------------------------------------------------


def protonet_job(out: Path) -> dict:
    """``fastadapt analyze`` on protonet-omniglot-5w1s's Conv4 at 16 channels, at initialization (run.seed 0), 8
    training tasks of 5 ways (the preset trains on 60):
    written to <out>/protonet-omniglot-init/analysis.json and .png."""
    from fastadapt.analysis import analyze

    record, _ = analyze(
        "protonet-omniglot-5w1s",
        ["model.hidden=16", "data.ways=5", "run.seed=0"],
        tasks=8,
        out=out / "protonet-omniglot-init",
    )
    return {
        "top_eigenvalue": record["hessian"]["top_eigenvalue"],
        "converged": record["hessian"]["converged"],
        "task_gradient_cosine": record["alignment"]["task_gradient_cosine"],
        "parameters": record["settings"]["parameters"],
        "not_applicable": list(record["not_applicable"]),
    }


JOBS = {
    "cg": cg_job,
    "divergence": divergence_job,
    "transfer": transfer_job,
    "transfer-stats": transfer_stats_job,
    "protonet": protonet_job,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/theory")
    p.add_argument("--only", nargs="*", choices=list(JOBS), help="jobs to run (default: all)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_file = out / "summary.json"
    for name in args.only or list(JOBS):
        load, started = os.getloadavg(), time.perf_counter()
        row = JOBS[name](out)
        row["run"] = {
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "seconds": round(time.perf_counter() - started, 1),
            "load_average_at_start": [round(v, 2) for v in load],
        }
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        if name == "transfer-stats":  # the statistics of the transfer job's measurements: its run record stays
            summary["transfer"] = summary.get("transfer", {}) | {k: v for k, v in row.items() if k != "run"}
        else:
            summary[name] = row
        write_json(summary_file, summary)
        print(json.dumps({name: row}), flush=True)


if __name__ == "__main__":
    main()
