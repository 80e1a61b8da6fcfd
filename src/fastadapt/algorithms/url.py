"""URL: one backbone distilled from several single-domain networks (Li, Liu & Bilen 2021, "Universal Representation
Learning from Multiple Domains for Few-shot Classification", ICCV, sec. 3.2, eq. 3; code github.com/VICO-UoE/URL,
``train_net_url.py``).

A student encoder ``f`` with one classification head ``h_d`` per training domain ``d`` (as
:class:`~fastadapt.algorithms.multidomain.MultiDomain`) learns from the labelled images of the meta-batch and from
one frozen teacher per domain, ``(f*_d, h*_d)``: the encoder and the classifier of a run trained on that domain
alone. Every image ``x_i`` of domain ``d = d(i)`` (the domain of its class: the ``domains`` source puts each domain's
classes in one block of class ids) adds, over the ``B`` images of the meta-batch:

    loss = 1/B sum_i [ CE(h_d(f(x_i)), y_i)
                       + beta_f * || n(A_d f(x_i)) - n(f*_d(x_i)) ||^2
                       + beta_l * T^2 * KL( softmax(h*_d(f*_d(x_i)) / T) || softmax(h_d(f(x_i)) / T) ) ]

with ``n(v) = v / ||v||`` and ``A_d`` a ``D x D`` linear adapter per domain (the paper's feature-space alignment,
``models/adaptors.py``: a 1x1 convolution without bias, Xavier-normal start), trained with the student and dropped
after training. ``h_d(f(x))`` are the student head's logits over domain ``d``'s classes only, ``h*_d(f*_d(x))`` the
teacher's over the same classes (the teacher was trained on that domain alone, its class ids in the same order).
A teacher encodes the meta-batch's images of its domain in one call, as its own training batches were one domain's:
with Conv4's BatchNorm, which keeps no running statistics, its features are those of that group of images.

Choices, against the paper's code: the feature distance is the squared Euclidean distance of L2-normalised features
(``distillation_loss(fs, ft, opt="l2")`` after ``F.normalize``, one of the code's options), not the kernel CKA the
code trains with (``opt="kernelcka"``): a per-image term, so a batch's loss is the mean of its images' and needs no
kernel bandwidth. The KL term is the code's ``DistillKL`` (``T^2`` times the KL per image, mean over images), T = 4
and the weights beta_f = beta_l = 1 as the code's defaults for every domain but ImageNet; the code's linear
annealing of both weights (``WeightAnnealing``) is left out. The paper takes one batch of every domain per step and
sums the per-domain means; with ``data.episode_scope = "domain"`` a step here is a batch of one domain, and the mean
is over the meta-batch's images.

Evaluation is MultiDomain's: the heads and adapters are dropped, a test task is classified by the nearest class
centroid of the student's features (cosine; ``classifier = "head"``: Baseline's per-task head), as URL is evaluated.

Teachers are run folders (``algorithm.teachers = { omniglot = "runs/url-teacher-omniglot", ... }``) of a classifier
over one domain's classes (``baseline``, or ``multidomain`` on one domain), loaded with ``fastadapt.load_run``,
frozen, in eval mode, kept outside the module's parameters and state (a run of this algorithm saves the student
alone, and ``load_run`` rebuilds it without the teachers: ``pretrained=False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, batch_metrics
from fastadapt.algorithms.heads import Head, head_logits
from fastadapt.algorithms.multidomain import MultiDomain
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, FastAdaptError
from fastadapt.core.registry import import_target

# The run folder and load_run live in fastadapt.runs (a higher layer): bound late, by name, as the registry binds
# its built-ins, so that no module import runs upwards.
LOAD_RUN = "fastadapt.runs.load:load_run"


def feature_distances(student: Tensor, teacher: Tensor) -> Tensor:
    """``[B]``: ``||n(s_i) - n(t_i)||^2`` of L2-normalised rows (``student``, ``teacher``: ``[B, D]``)."""
    return (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(1)


def logit_divergences(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``[B]``: ``T^2 KL(softmax(t_i / T) || softmax(s_i / T))`` (``student``, ``teacher``: ``[B, C]`` logits)."""
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    return temperature**2 * (log_t.exp() * (log_t - log_s)).sum(1)


@dataclass(frozen=True)
class Teacher:
    """One frozen single-domain network: a loaded run's algorithm (an encoder ``model`` and a ``classifier`` over its
    domain's classes), in eval mode, no gradient."""

    domain: str  # the training domain it teaches
    path: str  # its run folder
    algorithm: nn.Module  # the run's algorithm (Baseline-like: model, classifier, head_kind, pretrain_scale)
    input_shape: tuple[int, ...]  # one input, as the teacher was trained


def teacher_outputs(teacher: Teacher, x: Tensor) -> tuple[Tensor, Tensor]:
    """The teacher's features ``[B, D]`` and logits ``[B, C_d]`` of ``x`` (no graph), in ``x``'s dtype: computed in
    the teacher's own dtype, on ``x``'s device (the teacher is moved there on first use)."""
    algo = teacher.algorithm
    if tuple(x.shape[1:]) != teacher.input_shape:
        raise ConfigError(
            f"url: the teacher of {teacher.domain} ({teacher.path}) was trained on inputs {list(teacher.input_shape)} "
            f"but the student's are {list(x.shape[1:])}; train it with the student's data.image_size and "
            "data.channels"
        )
    weight = algo.classifier.weight
    if weight.device != x.device:
        algo.to(x.device)
    with torch.no_grad():
        z = algo.model(x.to(weight.dtype)).flatten(1)
        c = algo.classifier
        logits = head_logits(z, Head(c.weight, c.bias, algo.head_kind, algo.pretrain_scale()))
    return z.to(x.dtype), logits.to(x.dtype)


def load_teacher(domain: str, path: str, classes: int, features: int) -> Teacher:
    """The run in ``path`` as the frozen teacher of ``domain`` (``classes`` classes, the student's ``features``); a
    missing folder, a run of another domain, without a classifier, of another class count or feature size is a
    one-line :class:`ConfigError`."""
    where = f"algorithm.teachers.{domain}={path!r}"
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(
            f"{where}: no run folder there (no config.json); train the teacher first, e.g. fastadapt train "
            f"baseline-omniglot data.dataset={domain} run.out={path} (docs/CROSS_DOMAIN.md, URL)"
        )
    try:
        run: Any = import_target(LOAD_RUN, "url")(path)
    except FastAdaptError as e:
        raise ConfigError(f"{where}: {e}") from None
    algo, trained_on = run.algorithm, run.config.data.dataset
    if trained_on != domain:
        raise ConfigError(f"{where} was trained on data.dataset={trained_on!r}; a teacher is a run of its domain alone")
    if not isinstance(getattr(algo, "classifier", None), nn.Linear) or len(getattr(algo, "domain_sizes", [0])) > 1:
        raise ConfigError(
            f"{where} is a {run.config.algorithm} run; a teacher is a classifier over its domain's classes (train it "
            "with baseline)"
        )
    if algo.classifier.weight.shape[0] != classes:
        raise ConfigError(
            f"{where} classifies {algo.classifier.weight.shape[0]} classes but the training source's {domain} has "
            f"{classes}; train the teacher on the same classes (the same data.options.{domain}, split and parts)"
        )
    if algo.classifier.weight.shape[1] != features:
        raise ConfigError(
            f"{where} has {algo.classifier.weight.shape[1]} features but the student has {features}; train the "
            "teacher with the student's model"
        )
    algo.eval()
    for p in algo.parameters():
        p.requires_grad_(False)
    return Teacher(domain, str(path), algo, tuple(run.input_shape))


class URL(MultiDomain):
    """A student encoder distilled from one frozen network per training domain (see the module's docstring).

    Args:
        model: the student encoder ``f`` (an embedding).
        num_classes: C, the training classes of all domains (the engine passes it).
        domain_sizes: the classes of each domain in class-id order (the engine passes them for a ``domains`` source).
        domain_names: the domains' names in the same order (the engine passes them: ``data.options.domains``).
        teachers: training domain -> run folder of a classifier trained on that domain alone; one for every
            training domain and none for another.
        beta_f: the weight of the feature distillation (the paper's lambda^f).
        beta_l: the weight of the logit distillation (the paper's lambda^p).
        temperature: T of the logit distillation.
        classifier, distance, head, scale, embedding_dim: as :class:`~fastadapt.algorithms.multidomain.MultiDomain`.
        pretrained: load the teachers (False when trained weights replace them: ``load_run``, which needs no
            teacher; such a URL evaluates and refuses to train).
    """

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True
    encodes_meta_batch: ClassVar[bool] = True

    def __init__(
        self,
        model,
        num_classes: int,
        domain_sizes: Sequence[int] | None = None,
        domain_names: Sequence[str] | None = None,
        teachers: Mapping[str, str] | None = None,
        beta_f: float = 1.0,
        beta_l: float = 1.0,
        temperature: float = 4.0,
        classifier: str = "ncc",
        distance: str = "cosine",
        head: str = "linear",
        scale: float | None = None,
        embedding_dim: int | None = None,
        pretrained: bool = True,
    ) -> None:
        super().__init__(
            model, num_classes, domain_sizes, classifier, distance, head, scale, embedding_dim=embedding_dim
        )
        for name, v in (("beta_f", beta_f), ("beta_l", beta_l)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ConfigError(f"{name}={v!r} is invalid; it must be a finite number >= 0")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < 1e6:
            raise ConfigError(f"temperature={temperature!r} is invalid; it must be a finite number > 0")
        self.beta_f, self.beta_l, self.temperature = float(beta_f), float(beta_l), float(temperature)
        names = check_teachers(teachers, domain_names, self.domain_sizes)
        self.domain_names = tuple(names)
        dim = self.embedding_dim
        self.adapters = nn.Parameter(torch.empty(len(names), dim, dim))  # A_d, one per domain
        for a in self.adapters.data:
            nn.init.xavier_normal_(a)
        starts = torch.tensor([0, *self.domain_sizes]).cumsum(0)
        self.starts = tuple(int(s) for s in starts)  # domain d's classes: starts[d] .. starts[d + 1] - 1
        self._teachers: tuple[Teacher, ...] = ()  # not a submodule: no parameter, no state, no .to()/.train()
        if pretrained:
            assert teachers is not None  # check_teachers refused None
            self._teachers = tuple(load_teacher(n, teachers[n], size, dim) for n, size in zip(names, self.domain_sizes))

    @property
    def teachers(self) -> tuple[Teacher, ...]:
        """The frozen teachers in domain order (empty when built with ``pretrained=False``)."""
        return self._teachers

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Per-domain cross-entropy plus the feature and logit distillation from each image's domain teacher."""
        if not self._teachers:
            raise ConfigError(
                "url: built without its teachers (pretrained=False, as load_run builds a trained run): it evaluates "
                "but does not train; train through fastadapt.train, which loads algorithm.teachers"
            )
        x, y, z, masked = self.domain_logits(batch)
        ce = F.cross_entropy(masked, y)
        domain = self.domains[y]
        feature, divergence = [], []
        for d in domain.unique().tolist():
            rows = (domain == d).nonzero().squeeze(1)
            t_features, t_logits = teacher_outputs(self._teachers[d], x[rows])
            feature.append(feature_distances(z[rows] @ self.adapters[d].T, t_features))
            s_logits = masked[rows, self.starts[d] : self.starts[d + 1]]  # its own domain: not masked
            divergence.append(logit_divergences(s_logits, t_logits, self.temperature))
        f, kl = torch.cat(feature).mean(), torch.cat(divergence).mean()
        loss = ce + self.beta_f * f + self.beta_l * kl
        metrics = batch_metrics(masked, y, loss) | {
            "ce": float(ce.detach()),
            "feature": float(f.detach()),
            "kl": float(kl.detach()),
        }
        return MetaOutput(loss, metrics)


def check_teachers(
    teachers: Mapping[str, str] | None, domain_names: Sequence[str] | None, domain_sizes: Sequence[int]
) -> list[str]:
    """The training domains' names, once ``teachers`` names one run folder for each of them and nothing else;
    otherwise a one-line :class:`ConfigError`."""
    if not teachers:
        raise ConfigError(
            'url needs algorithm.teachers = { <domain> = "<run folder>", ... }, one single-domain run per training '
            'domain; without teachers it is multidomain (algorithm.name = "multidomain")'
        )
    if not isinstance(teachers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (str, Path)) for k, v in teachers.items()
    ):
        raise ConfigError(f'algorithm.teachers={teachers!r}: a table of domain = "run folder" strings')
    if domain_names is None or len(domain_names) != len(domain_sizes) or len(domain_sizes) < 2:
        raise ConfigError(
            'url trains on several domains: data.dataset = "domains" with data.options.domains = [...] (found '
            f"{'no domain names' if domain_names is None else list(domain_names)}, {len(domain_sizes)} domain(s))"
        )
    names = [str(n) for n in domain_names]
    missing = [n for n in names if n not in teachers]
    if missing:
        raise ConfigError(
            f"algorithm.teachers has no teacher for the training domain {missing[0]!r} (training domains: "
            f'{", ".join(names)}); add {missing[0]} = "<run folder>"'
        )
    extra = sorted(set(teachers) - set(names))
    if extra:
        raise ConfigError(
            f"algorithm.teachers names {extra[0]!r}, which is not a training domain ({', '.join(names)}); a held-out "
            "domain has no teacher"
        )
    return names


__all__ = ["URL", "Teacher", "feature_distances", "load_teacher", "logit_divergences", "teacher_outputs"]
