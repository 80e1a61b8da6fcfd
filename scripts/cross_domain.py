"""The cross-domain study of docs/CROSS_DOMAIN.md: train each row once, evaluate every cell, make the table.

    python scripts/cross_domain.py train [--minutes 10] [--workers 2] [--only NAME ...]
    python scripts/cross_domain.py eval [--episodes 300] [--finetune-episodes 50] [--only NAME ...]
    python scripts/cross_domain.py table            # the Markdown table from results/runs/xd-*/evals

Every row is trained on Omniglot's 25 background-train alphabets (Lake's split; rotations as extra
training classes), validated on the 5 background-val alphabets, and never sees the 20 evaluation
alphabets or Fashion-MNIST. Training and evaluation go through the ``fastadapt`` command (one
thread each, ``--workers`` at a time); a run that stopped resumes, a finished one is skipped. Every
cell is ``fastadapt eval RUN key=value ...`` and lands in ``RUN/evals/<setting>.json``; cells of the
same column use the same fixed episodes, so rows are paired.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RUNS = Path("results/runs")
LOGS = Path("runs/xd-logs")  # training and evaluation logs: not results (git-ignored)
SPLIT = ["data.split=lake", "data.train_part=background_train", "data.val_part=background_val", "data.test_part=evaluation",
         "data.options={ train_rotations = true }"]
TRAIN = ["eval.test_episodes=0", "eval.val_episodes=100", "run.threads=1", "run.progress=false"]

# row label, run name, preset, its own overrides (training), whether its model is an embedding (test-time fine-tuning applies)
ROWS = [
    ("ProtoNets", "xd-protonet", "protonet-omniglot-5w1s", [], True),
    ("MAML", "xd-maml", "maml-omniglot-5w1s", ["data.meta_batch=8"], False),
    ("Meta-SGD", "xd-metasgd", "metasgd-omniglot-5w1s", ["data.meta_batch=8"], False),
    ("Reptile", "xd-reptile", "reptile-omniglot-5w1s", [], False),
    # s = 1: the recipe of the committed run, made before issue 19 set the presets' scale (learnt from 10)
    ("Matching Networks", "xd-matching", "matching-omniglot-5w1s", ["algorithm.scale=1.0", "algorithm.learn_scale=false"], True),
    ("Matching Networks, scale learnt from 10 (issue 19)", "xd-matching-i19", "matching-omniglot-5w1s", [], True),  # today's preset
    ("Baseline", "xd-baseline", "baseline-omniglot", [], True),
    ("Baseline++", "xd-baselinepp", "baselinepp-omniglot", [], True),
    ("linear probe (RFS)", "xd-linear-probe", "linear-probe-omniglot", [], True),
]
# Lake's one-shot challenge: within-alphabet 20-way 1-shot episodes for training, validation and test
LAKE = ("ProtoNets, within-alphabet training (Lake target)", "xd-protonet-lake", "protonet-omniglot-5w1s",
        ["data.episode_scope=alphabet", "data.ways=20", "data.test_ways=20", "data.queries=5"], True)

# column key -> (title, eval overrides)
COLUMNS = {
    "omniglot-5w1s": ("Omniglot 5-way 1-shot", ["data.test_ways=5", "data.test_shots=1", "data.episode_scope=dataset"]),
    "omniglot-5w5s": ("Omniglot 5-way 5-shot", ["data.test_ways=5", "data.test_shots=5", "data.episode_scope=dataset"]),
    "lake-20w1s": ("Lake within-alphabet 20-way 1-shot", ["data.test_ways=20", "data.test_shots=1", "data.episode_scope=alphabet"]),
    "fmnist-5w1s": ("Fashion-MNIST 5-way 1-shot", ["data.test_dataset=fashion-mnist", "data.test_part=test", "data.test_ways=5", "data.test_shots=1",
                                                 "data.episode_scope=dataset"]),
    "fmnist-5w5s": ("Fashion-MNIST 5-way 5-shot", ["data.test_dataset=fashion-mnist", "data.test_part=test", "data.test_ways=5", "data.test_shots=5",
                                                 "data.episode_scope=dataset"]),
}
FINETUNE = ["eval.finetune=encoder", "eval.finetune_steps=20", "eval.finetune_lr=0.01"]
COMMON_EVAL = ["data.test_queries=15", "eval.seed=2024", "run.threads=1", "run.progress=false", "eval.batch=25"]
# Lake et al. 2015's protocol: 20-way within-alphabet 1-shot trials with one test drawing per class
LAKE_EVAL = ["data.test_ways=20", "data.test_shots=1", "data.episode_scope=alphabet", "data.test_queries=1", "eval.seed=2015",
             "run.threads=1", "run.progress=false", "eval.batch=50", "eval.test_episodes=1000"]


def rows(only: list[str] | None) -> list[tuple]:
    every = [LAKE, *ROWS]  # the longest run first
    return [r for r in every if not only or r[1] in only]


def run_queue(jobs: list[tuple[str, list[str]]], workers: int) -> None:
    """Run ``(name, argv)`` jobs, ``workers`` at a time, each logging to runs/xd-logs/<name>.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < workers:
            name, argv = pending.pop(0)
            log = open(LOGS / f"{name}.log", "a")
            print(f"{time.strftime('%H:%M:%S')} start {name}: {' '.join(argv)}", flush=True)
            running.append((name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(5)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"{time.strftime('%H:%M:%S')} done {name}: exit {proc.returncode}", flush=True)


def train(args: argparse.Namespace) -> None:
    jobs = []
    for _label, name, preset, extra, _ in rows(args.only):
        out = RUNS / name
        if (out / "results.json").is_file():
            print(f"{name}: trained (results.json exists); skipped")
            continue
        minutes = args.lake_minutes if name == LAKE[1] else args.minutes
        jobs.append((name, ["fastadapt", "train", preset, *SPLIT, *TRAIN, *extra, f"optim.max_minutes={minutes}", f"run.name={name}",
                            f"run.out={out}"]))
    run_queue(jobs, args.workers)


FINETUNE_COLUMNS = ("fmnist-5w1s", "fmnist-5w5s")  # fine-tuning is measured where the domain changes


def cells(finetune_too: bool) -> list[tuple[str, bool, list[str]]]:
    out = []
    for key, (_, overrides) in COLUMNS.items():
        out.append((key, False, overrides))
        if finetune_too and key in FINETUNE_COLUMNS:
            out.append((key, True, [*overrides, *FINETUNE]))
    return out


def evaluate(args: argparse.Namespace) -> None:
    from fastadapt.runs.folder import RunFolder

    jobs = []
    for _, name, _, _, embedding in rows(args.only):
        run = RUNS / name
        if not (run / "results.json").is_file():
            print(f"{name}: not trained yet; skipped")
            continue
        for key, ft, overrides in cells(embedding):
            if cell_file(run, key, ft, args.finetune_episodes if ft else args.episodes) is not None:
                continue  # evaluated already
            if not embedding and key == "lake-20w1s":
                continue  # a 5-way head cannot take 20-way tasks
            episodes = args.finetune_episodes if ft else (args.episodes if embedding else args.gradient_episodes)
            argv = ["fastadapt", "eval", str(run), *overrides, *COMMON_EVAL, f"eval.test_episodes={episodes}"]
            jobs.append((f"{name}-{key}{'-ft' if ft else ''}", argv))
        if name == LAKE[1] and not RunFolder(run).eval_file("20w1s", LAKE_EVAL).is_file():
            jobs.insert(0, (f"{name}-lake-target", ["fastadapt", "eval", str(run), *LAKE_EVAL]))
    run_queue(jobs, args.workers)


def table(args: argparse.Namespace) -> None:
    print(markdown_table(RUNS))
    print(lake_table(RUNS))


def cell_file(run: Path, key: str, ft: bool, episodes: int) -> Path | None:
    """The evals/ file of one cell (named by fastadapt eval after its overrides), if it was evaluated:
    on ``episodes`` fixed episodes, else on the first 100 of them (the slow gradient-based rows)."""
    from fastadapt.runs.folder import RunFolder

    for count in (episodes, 100):
        overrides = [*COLUMNS[key][1], *(FINETUNE if ft else []), *COMMON_EVAL, f"eval.test_episodes={count}"]
        ways, shots = (o.split("=")[1] for o in overrides if o.startswith(("data.test_ways", "data.test_shots")))
        path = RunFolder(run).eval_file(f"{ways}w{shots}s", overrides)
        if path.is_file():
            return path
    return None


def markdown_table(root: Path, episodes: int = 300, finetune_episodes: int = 50) -> str:
    """Rows x columns: mean +- 95 % CI (%), and with fine-tuning below it where it applies."""
    head = "| row (trained once on Omniglot background) | " + " | ".join(t for t, _ in COLUMNS.values()) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for label, name, _, _, embedding in [*ROWS, LAKE]:
        run = root / name
        if not run.is_dir():
            continue
        for ft in ([False, True] if embedding else [False]):
            cells_text = []
            for key in COLUMNS:
                path = cell_file(run, key, ft, finetune_episodes if ft else episodes)
                if path is None:
                    if ft and key not in FINETUNE_COLUMNS:
                        cells_text.append("")
                    else:
                        cells_text.append("n/a (5-way head)" if not embedding and key == "lake-20w1s" else "-")
                    continue
                d = json.loads(path.read_text())
                note = "" if d["episodes"] == (finetune_episodes if ft else episodes) else f" ({d['episodes']} ep.)"
                cells_text.append(f"{100 * d['mean']:.2f} ± {100 * d['ci']:.2f}{note}")
            lines.append(f"| {label}{' + fine-tuning' if ft else ''} | " + " | ".join(cells_text) + " |")
    return "\n".join(lines) + "\n"


def lake_table(root: Path) -> str:
    """Lake's one-shot challenge: the within-alphabet run on 1000 trials, against the paper's people and BPL."""
    from fastadapt.runs.folder import RunFolder

    lines = ["| model | error on 1000 within-alphabet 20-way 1-shot trials (95 % CI) | training |", "|---|---|---|"]
    run = root / LAKE[1]
    path = RunFolder(run).eval_file("20w1s", LAKE_EVAL)
    if path.is_file():
        d = json.loads(path.read_text())
        res = json.loads((run / "results.json").read_text())
        lines.append(f"| {LAKE[0]} | {100 * (1 - d['mean']):.2f} ± {100 * d['ci']:.2f} % | {res['steps']} steps, "
                     f"{res['train_seconds'] / 60:.0f} min of one core |")
    lines += ["| people (Lake et al. 2015) | 4.5 % | |", "| Bayesian Program Learning (Lake et al. 2015) | 3.3 % | |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--lake-minutes", type=float, default=50.0)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--only", nargs="*")
    t.set_defaults(fn=train)
    e = sub.add_parser("eval")
    e.add_argument("--episodes", type=int, default=300)
    e.add_argument("--finetune-episodes", type=int, default=50)
    e.add_argument("--gradient-episodes", type=int, default=100, help="episodes per cell of the gradient-based rows (slower to evaluate)")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--only", nargs="*")
    e.set_defaults(fn=evaluate)
    tb = sub.add_parser("table")
    tb.set_defaults(fn=table)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
