"""``fastadapt explain RUN``: one task's predictions and why, as a PNG and a JSON file.

The task is episode ``N`` of the run's first test setting (``--episode N``, the same fixed episodes
``fastadapt eval`` scores), or your own: ``--support DIR`` (``DIR/<class>/<image>``) and ``--query FILE``
(one image, or a folder of images). Images are converted to the run's input by
:mod:`fastadapt.apps.inputs`. The maths is :func:`fastadapt.eval.explanations.explain`; this module picks
the task, draws the picture and writes the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastadapt.apps.inputs import decode_image
from fastadapt.core.episodes import Episode
from fastadapt.core.errors import ConfigError, DataError, FastAdaptError
from fastadapt.eval.explanations import SHOWN, Explanation, explain
from fastadapt.report.figure import pyplot

QUERY_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class NamedTask:
    """A task to explain: the episode, a name per label, a name per query, and where it came from."""

    task: Episode
    class_names: tuple[str, ...]
    query_names: tuple[str, ...]
    source: str


def input_shape(run: Any) -> tuple[int, ...]:
    """One example's shape, as the run was trained."""
    if run.on_environments:
        raise FastAdaptError(
            f"{run.folder.path} is a reinforcement-learning run (its tasks are environments, not labelled examples): "
            f"nothing to explain per example; score it with fastadapt eval or fastadapt study studies/rl.toml"
        )
    return run.input_shape


def episode_task(run: Any, episode: int, queries: int = 5) -> NamedTask:
    """Episode ``episode`` of the run's first test setting, with ``queries`` of its queries (one per class first)."""
    if episode < 0:
        raise ConfigError(f"--episode={episode} is invalid; episodes count from 0")
    input_shape(run)  # a one-line refusal for a reinforcement-learning run
    sources = run.tasks("test")
    if not sources.tests:
        raise ConfigError(f"{run.folder.path} has no test setting; pass --support DIR --query FILE")
    key, source = next(iter(sources.tests.items()))
    *_, batch = source.fixed(episode + 1, 1)  # the fixed episodes 0..episode, one a batch: keep the last
    task = batch.task(0)
    keep = pick_queries(task.query_y, queries)
    names = (
        tuple(f"class {i}" for i in range(int(task.support_y.max()) + 1))
        if not task.support_y.is_floating_point()
        else ("output",)
    )
    picked = Episode(task.support_x, task.support_y, task.query_x[keep], task.query_y[keep], task.classes)
    return NamedTask(
        picked, names, tuple(f"query {int(i)}" for i in keep), f"{run.folder.path}: test {key}, episode {episode}"
    )


def pick_queries(query_y: Tensor, count: int) -> Tensor:
    """Indices of ``count`` queries: the first of each class, then the second of each, ... (all for regression)."""
    if count < 1:
        raise ConfigError(f"--queries={count} is invalid; explain at least 1 query")
    if query_y.is_floating_point():
        return torch.arange(min(count, len(query_y)))
    rank = torch.zeros_like(query_y)
    for c in query_y.unique():
        where = (query_y == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    order = sorted(range(len(query_y)), key=lambda i: (int(rank[i]), int(query_y[i])))
    return torch.tensor(order[:count], dtype=torch.long)


def folder_task(run: Any, support: str | Path, query: str | Path, invert: str = "auto") -> NamedTask:
    """Support images ``support/<class>/<image>`` and the query image(s) ``query`` (a file or a folder)."""
    shape = input_shape(run)
    support, query = Path(support), Path(query)
    if not support.is_dir():
        raise DataError(f"--support {support} is not a folder; give a folder with one subfolder of images per class")
    xs, ys, names = [], [], []
    for label, d in enumerate(sorted(p for p in support.iterdir() if p.is_dir())):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in QUERY_SUFFIXES)
        if not files:
            raise DataError(f"class folder {d} holds no PNG or JPEG image")
        names.append(d.name)
        for f in files:
            xs.append(decode_image(f.read_bytes(), shape, invert))
            ys.append(label)
    if len(names) < 2:
        raise DataError(f"--support {support} has {len(names)} class folder(s); give at least 2")
    files = (
        [query]
        if query.is_file()
        else sorted(f for f in query.iterdir() if f.suffix.lower() in QUERY_SUFFIXES)
        if query.is_dir()
        else []
    )
    if not files:
        raise DataError(f"--query {query} is neither an image nor a folder of PNG/JPEG images")
    qx = torch.stack([decode_image(f.read_bytes(), shape, invert) for f in files])
    task = Episode(torch.stack(xs), torch.tensor(ys), qx, torch.full((len(files),), -1, dtype=torch.long))
    return NamedTask(task, tuple(names), tuple(f.name for f in files), f"support {support}, query {query}")


def explanation_record(expl: Explanation, named: NamedTask, run: Any) -> dict[str, Any]:
    """The JSON file: the explanation plus where the task and the weights came from."""
    record = expl.to_dict()
    record.update(
        {
            "run": str(run.folder.path),
            "weights": run.weights,
            "weights_step": run.step,
            "task": named.source,
            "class_names": list(named.class_names),
        }
    )
    for item, name, y in zip(record["queries"], named.query_names, named.task.query_y.tolist()):
        item["name"] = name
        item["label"] = None if y == -1 else y
    return record


def explain_command(
    run_dir: str,
    overrides: list[str],
    episode: int | None,
    support: str | None,
    query: str | None,
    queries: int,
    attribution: str,
    out: str | None,
    invert: str = "auto",
) -> tuple[Path, Path]:
    """What ``fastadapt explain`` does; returns the PNG and JSON paths written."""
    from fastadapt.runs import load_run

    if (support is None) != (query is None):
        raise ConfigError("--support and --query go together: a folder of class folders and a query image")
    if support is not None and episode is not None:
        raise ConfigError("give either --episode N or --support DIR --query FILE, not both")
    run = load_run(run_dir, overrides)
    named = (
        folder_task(run, support, query, invert)
        if support is not None and query is not None
        else episode_task(run, episode or 0, queries)
    )
    expl = explain(run.algorithm, named.task, attribution=attribution)
    stem = (
        Path(out)
        if out
        else Path(f"{Path(run_dir).resolve().name}-" + (f"episode{episode or 0}" if support is None else "own"))
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".png")
    json_path.write_text(json.dumps(explanation_record(expl, named, run), indent=1) + "\n")
    draw_explanation(expl, named, png_path)
    return png_path, json_path


# --- the picture -------------------------------------------------------------------------------------


def _show(ax: Any, x: Tensor) -> None:
    img = x.detach().float().cpu()
    if img.ndim == 3 and img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    elif img.ndim == 3:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def draw_explanation(expl: Explanation, named: NamedTask, path: str | Path) -> Path:
    """One figure: the support images by class (top), then per query its image, its attribution map and
    the algorithm's evidence (distances, attention or probabilities); then layer changes, gates or memory; a
    predictor's own parts are named in the title."""
    plt = pyplot()
    task = named.task
    images = task.support_x.ndim == 4
    q = expl.outputs.shape[0]
    extra = 1 if (expl.layers or "gates" in expl.parts or "read_weights" in expl.parts) else 0
    rows = (1 if images else 0) + q + extra
    fig = plt.figure(figsize=(11, 2.2 * rows + 0.4))
    grid = fig.add_gridspec(rows, 3, width_ratios=[1, 1, 3])
    r = 0
    if images:
        ax = fig.add_subplot(grid[0, :])
        ax.axis("off")
        ax.set_title(f"{expl.algorithm}: support set by class ({named.source})", fontsize=9)
        labels = task.support_y.tolist()
        n = len(labels)
        for i, (x, y) in enumerate(sorted(zip(task.support_x, labels), key=lambda p: p[1])):
            sub = ax.inset_axes((i / max(n, 1), 0.12, 0.9 / max(n, 1), 0.78))
            _show(sub, x)
            sub.set_xlabel(named.class_names[y] if y < len(named.class_names) else str(y), fontsize=6)
        r = 1
    for i in range(q):
        ax_img = fig.add_subplot(grid[r + i, 0])
        ax_attr = fig.add_subplot(grid[r + i, 1]) if expl.attribution is not None else None
        ax_bar = fig.add_subplot(grid[r + i, 1:] if expl.attribution is None else grid[r + i, 2])
        if images:
            _show(ax_img, task.query_x[i])
        else:
            ax_img.axis("off")
        ax_img.set_title(named.query_names[i], fontsize=8)
        a = expl.attribution
        if ax_attr is None:
            pass
        elif a is not None and images:
            m = a.maps[i].sum(0).detach()
            lim = float(m.abs().max()) or 1.0
            ax_attr.imshow(m.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            note = f"delta {float(a.delta[i]):+.3g}" if a.delta is not None else ""
            ax_attr.set_title(f"{a.method.replace('_', ' ')}\nclass {int(a.target[i])} {note}", fontsize=7)
            ax_attr.set_xticks([])
            ax_attr.set_yticks([])
        else:
            ax_attr.axis("off")
        _evidence(ax_bar, expl, named, i)
    if extra:
        _adaptation(fig.add_subplot(grid[rows - 1, :]), expl)
    own = [k for k in expl.parts if k not in SHOWN]  # a predictor's own parts (a user's explain)
    if own:
        fig.suptitle(f"{expl.algorithm}: {expl.kind}; its own parts {', '.join(own)} are in the JSON file", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def _evidence(ax: Any, expl: Explanation, named: NamedTask, i: int) -> None:
    names = list(named.class_names)
    pred = expl.predicted[i]
    if expl.probabilities is None:
        ax.axis("off")
        values = expl.outputs[i].flatten().tolist()  # a sequence task answers many values: show the first few
        shown = ", ".join(f"{v:.4g}" for v in values[:8]) + (f", ... ({len(values)} values)" if len(values) > 8 else "")
        ax.text(0, 0.5, f"output [{shown}]", fontsize=8)
        return
    c = int(pred)
    label = names[c] if c < len(names) else str(c)
    if "distances" in expl.parts:
        d = expl.parts["distances"][i]
        ax.bar(range(len(d)), d.tolist(), color=["C3" if j == c else "C0" for j in range(len(d))])
        ax.set_ylabel("distance", fontsize=7)
        ax.set_title(f"distance to each prototype: nearest = {label}", fontsize=8)
    elif "attention" in expl.parts:
        w = expl.parts["attention"][i]
        ys = named.task.support_y.tolist()
        ax.bar(range(len(w)), w.tolist(), color=[f"C{y % 10}" for y in ys])
        ax.set_ylabel("attention", fontsize=7)
        ax.set_title(f"attention over the support examples (colour: class); predicted {label}", fontsize=8)
    else:
        p = expl.probabilities[i]
        ax.bar(range(len(p)), p.tolist(), color=["C3" if j == c else "C0" for j in range(len(p))])
        ax.set_ylim(0, 1)
        ax.set_title(f"class probabilities: predicted {label}", fontsize=8)
    n = len(expl.parts["attention"][i]) if "attention" in expl.parts else expl.outputs.shape[1]
    if "attention" not in expl.parts:
        ax.set_xticks(range(n))
        ax.set_xticklabels([names[j] if j < len(names) else str(j) for j in range(n)], fontsize=6)
    ax.tick_params(labelsize=6)


def _adaptation(ax: Any, expl: Explanation) -> None:
    if "read_weights" in expl.parts:
        rw = expl.parts["read_weights"].mean(1)  # [steps, slots], mean over heads
        ww = expl.parts["write_weights"].mean(1)
        used = (rw.amax(0) + ww.amax(0)) > 1e-3
        cols = used.nonzero().flatten()[:64]
        both = torch.cat([ww[:, cols], rw[:, cols]], dim=1).T
        ax.imshow(both.numpy(), aspect="auto", cmap="viridis")
        ax.set_title(
            "memory: write weightings (top) and read weightings (bottom) of the used slots over steps "
            f"({expl.parts['phase'].count('support')} support steps, then one per query)",
            fontsize=8,
        )
        ax.set_xlabel("step", fontsize=7)
    elif "gates" in expl.parts:
        g = expl.parts["gates"]
        for j, name in enumerate(g.names):
            ax.plot(g.input_gate[:, j].tolist(), color=f"C{j % 10}", label=f"i {name}")
            ax.plot(g.forget_gate[:, j].tolist(), color=f"C{j % 10}", linestyle="--")
        ax.set_title(
            "meta-LSTM gates per step: input i_t (solid), forget f_t (dashed), mean per parameter tensor", fontsize=8
        )
        ax.set_xlabel("inner step", fontsize=7)
        ax.legend(fontsize=5, ncol=4)
    else:
        names = [c.name for c in expl.layers]
        ax.barh(
            range(len(names)), [c.change for c in expl.layers]
        )  # absolute: a zero-initialised bias has no relative scale
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=5)
        ax.invert_yaxis()
        ax.set_xlabel("||phi - theta|| (relative change in the JSON file)", fontsize=7)
        ax.set_title("how far adaptation moved each parameter tensor", fontsize=8)
    ax.tick_params(labelsize=6)


__all__ = [
    "NamedTask",
    "draw_explanation",
    "episode_task",
    "explain_command",
    "explanation_record",
    "folder_task",
    "pick_queries",
]
