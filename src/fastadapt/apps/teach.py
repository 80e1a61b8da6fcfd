"""Teaching with a person in the loop: the adapted task, the pool of unlabelled examples, uncertainty sampling.

The task is every example the person gave (drawn, uploaded, or a pool example they labelled), adapted again
whenever the labelled set changes (:class:`Learner`). A round proposes the examples of the :class:`Pool` the
model is least sure about (:func:`propose`); :func:`score_rounds` compares the task as taught with random
labelling.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastadapt.apps.inputs import oriented
from fastadapt.apps.store import Conflict, Example, NotFound
from fastadapt.core.errors import DataError
from fastadapt.data.convert import check_contained

HELD_OUT = 0.4  # fraction of each pool class kept for scoring
POOL_SEED = 0


@dataclass(frozen=True)
class Pool:
    """Pool examples ``x [M, *x]`` with their hidden classes ``y [M]`` (names ``names``); ``held_out [M]`` bool.

    The pool is a labelled set whose labels the person never sees: Omniglot's test characters
    (``pool="omniglot"``: ``ways`` characters at one rotation, 20 drawings each) or a folder
    ``<pool>/<class>/<image>``. A seeded :data:`HELD_OUT` of each pool class is held out for scoring; the rest
    can be proposed.
    """

    x: Tensor
    y: Tensor
    names: tuple[str, ...]
    held_out: Tensor
    source: str

    def proposable(self) -> Tensor:
        return (~self.held_out).nonzero().flatten()

    def check(self, index: int) -> None:
        if not 0 <= index < len(self.y):
            raise NotFound(f"pool example {index} does not exist (the pool has {len(self.y)})")


def load_pool(spec: str, shape: tuple[int, ...], ways: int = 5, invert: str = "auto", seed: int = POOL_SEED) -> Pool:
    """``spec``: ``omniglot`` (``ways`` test characters, upright) or a folder ``<class>/<image>``; images fitted to
    ``shape``."""
    from fastadapt.data import ClassDataset, load_omniglot
    from fastadapt.data.classes import conform_images

    if len(shape) != 3:
        raise DataError(f"the app teaches image classes; this run's inputs have shape {list(shape)}")
    g = torch.Generator().manual_seed(seed)
    if spec == "omniglot":
        data = load_omniglot("vinyals", "test")
        upright = [i for i, n in enumerate(data.names) if n.endswith("/rot0")]
        pick = [upright[int(i)] for i in torch.randperm(len(upright), generator=g)[:ways]]
        data = data.subset(pick)
        source = f"Omniglot test characters ({ways}: {', '.join(data.names)})"
    else:
        folder = Path(spec)
        if not folder.is_dir():
            raise DataError(f"--pool {spec}: not 'omniglot' and not a folder of class folders")
        check_contained(folder, "--pool")
        data = ClassDataset.from_folder(folder, size=(shape[1], shape[2]), channels=shape[0])
        source = f"folder {folder}"
    data = conform_images(data, shape[-1], shape[0])
    x = data.data.float().div(255.0) if data.data.dtype == torch.uint8 else data.data.float()
    if spec != "omniglot":
        x = torch.stack([oriented(xi, invert) for xi in x])
    counts = data.counts.tolist()
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    held = torch.zeros(len(y), dtype=torch.bool)
    start = 0
    for c in counts:
        order = (
            torch.randperm(c, generator=g)[: max(1, round(HELD_OUT * c))] if c > 1 else torch.zeros(0, dtype=torch.long)
        )
        held[start + order] = True
        start += c
    return Pool(x, y, tuple(data.names), held, source)


def entropy(p: Tensor) -> Tensor:
    """``[M, N]`` probabilities -> ``[M]`` entropies (nats)."""
    return -(p.clamp_min(1e-12).log() * p).sum(-1)


@dataclass
class Adapted:
    """One adaptation: the predictor, the class id of each label, the support set, and what it cost."""

    predictor: Any
    class_ids: list[int]
    support_x: Tensor
    support_y: Tensor
    revision: int
    adapt_ms: float


@dataclass
class Learner:
    """The run's algorithm adapted to the app's task; thread-safe (one adaptation or prediction at a time).

    The task is every example the person gave (drawn, uploaded, or a pool example they labelled); labels are
    the person's classes in creation order (``0..n-1``, classes without an example left out). It is adapted
    again whenever the labelled set changes (cached by the store's revision), and each adaptation's latency is
    kept for the page.
    """

    algorithm: Any
    shape: tuple[int, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    cached: Adapted | None = None

    def adapt(
        self, examples: list[Example], images: list[Tensor], revision: int, class_order: list[int], fresh: bool = False
    ) -> Adapted:
        """The task of ``examples`` (images ``[*x]`` each) adapted; reused while ``revision`` is unchanged (unless
        ``fresh``)."""
        with self.lock:
            if not fresh and self.cached is not None and self.cached.revision == revision:
                return self.cached
            present = {e.class_id for e in examples}
            ids = [c for c in class_order if c in present]
            if not ids:
                raise Conflict("no class has an example yet; draw or upload one first")
            label = {c: i for i, c in enumerate(ids)}
            sx = torch.stack(images)
            sy = torch.tensor([label[e.class_id] for e in examples])
            start = time.perf_counter()
            predictor = self.algorithm.adapt(
                sx, sy
            )  # with grad: gradient-based and learnt-head adaptation take gradients
            ms = (time.perf_counter() - start) * 1e3
            self.cached = Adapted(predictor, ids, sx, sy, revision, ms)
            return self.cached

    def probabilities(self, adapted: Adapted, x: Tensor) -> tuple[Tensor, float]:
        """``x [B, *x]`` -> class probabilities ``[B, n]`` over the task's classes, and the milliseconds it took."""
        n = len(adapted.class_ids)
        with self.lock:
            start = time.perf_counter()
            with torch.no_grad():
                out = adapted.predictor(x)
            ms = (time.perf_counter() - start) * 1e3
        if out.ndim != 2 or out.shape[1] < n:
            raise Conflict(
                f"this run's model has {out.shape[-1]} outputs; it cannot tell {n} classes apart: delete a class"
            )
        return torch.softmax(out[:, :n].double(), dim=-1).float(), ms

    def adapt_plain(self, sx: Tensor, sy: Tensor) -> Any:
        with self.lock:
            return self.algorithm.adapt(sx, sy)


def propose(learner: Learner, adapted: Adapted, pool: Pool, labelled: set[int], k: int) -> list[dict[str, Any]]:
    """The ``k`` proposable, unlabelled pool examples of highest predictive entropy, with the model's guess.

    A round proposes these: the examples whose predicted class distribution has the highest entropy
    (uncertainty sampling).
    """
    candidates = [int(i) for i in pool.proposable() if int(i) not in labelled]
    if not candidates:
        return []
    p, _ = learner.probabilities(adapted, pool.x[candidates])
    h = entropy(p)
    order = h.argsort(descending=True)[:k]
    return [
        {
            "pool_index": candidates[int(j)],
            "entropy": float(h[j]),
            "guess": adapted.class_ids[int(p[j].argmax())],
            "probabilities": [float(v) for v in p[j]],
        }
        for j in order
    ]


def class_of_pool_class(pool: Pool, examples: list[Example], classes: list[dict[str, Any]]) -> dict[int, int]:
    """Pool class -> the person's class id: a pool class's name if a person's class has that name, else the class
    the person gave most of its examples; a pool class the person never labelled has none."""
    by_name = {c["name"]: c["id"] for c in classes}
    votes: dict[int, Counter[int]] = {}
    for e in examples:
        if e.pool_index is not None:
            votes.setdefault(int(pool.y[e.pool_index]), Counter())[e.class_id] += 1
    out = {}
    for t, name in enumerate(pool.names):
        if name in by_name:
            out[t] = by_name[name]
        elif t in votes:
            out[t] = votes[t].most_common(1)[0][0]
    return out


def score_rounds(
    learner: Learner,
    pool: Pool,
    examples: list[Example],
    images: list[Tensor],
    classes: list[dict[str, Any]],
    seed: int = POOL_SEED,
) -> dict[str, Any]:
    """Held-out accuracy of the task as taught (uncertainty) and of the random arm.

    When the round is over, both arms are scored on the held-out part:

    * uncertainty: the task as the person taught it;
    * random: the person's own drawings and uploads, plus the same number of pool examples as the person
      has labelled, drawn at random (a fixed seeded order), each labelled with the class the person gave
      that pool class (:func:`class_of_pool_class`; examples of a pool class the person never labelled are
      skipped).

    A held-out example counts where its pool class has a person's class (as above); accuracy is the
    fraction of those predicted as that class. Pool and held-out examples are predicted as one batch.
    """
    mapping = class_of_pool_class(pool, examples, classes)
    order = [c["id"] for c in classes]
    held = pool.held_out.nonzero().flatten()
    scored = [int(i) for i in held if int(pool.y[i]) in mapping]
    labelled = sum(e.pool_index is not None for e in examples)
    result: dict[str, Any] = {
        "labelled": labelled,
        "evaluated": len(scored),
        "acc_uncertainty": None,
        "acc_random": None,
    }
    if not scored:
        return result

    def accuracy(sx: list[Tensor], class_ids: list[int]) -> float | None:
        ids = [c for c in order if c in set(class_ids)]
        if not ids:
            return None
        label = {c: i for i, c in enumerate(ids)}
        predictor = learner.adapt_plain(torch.stack(sx), torch.tensor([label[c] for c in class_ids]))
        with learner.lock, torch.no_grad():
            out = predictor(pool.x[scored])[:, : len(ids)]
        predicted = [ids[int(j)] for j in out.argmax(-1)]
        return sum(p == mapping[int(pool.y[i])] for p, i in zip(predicted, scored)) / len(scored)

    result["acc_uncertainty"] = accuracy(images, [e.class_id for e in examples])
    own = [(img, e.class_id) for img, e in zip(images, examples) if e.pool_index is None]
    g = torch.Generator().manual_seed(seed + 1)
    proposable = pool.proposable()
    randomly = [int(proposable[int(j)]) for j in torch.randperm(len(proposable), generator=g)[:labelled]]
    chosen = [(pool.x[i], mapping[int(pool.y[i])]) for i in randomly if int(pool.y[i]) in mapping]
    both = own + chosen
    result["acc_random"] = accuracy([x for x, _ in both], [c for _, c in both]) if both else None
    return result


__all__ = [
    "HELD_OUT",
    "Adapted",
    "Learner",
    "Pool",
    "check_contained",
    "class_of_pool_class",
    "entropy",
    "load_pool",
    "propose",
    "score_rounds",
]
