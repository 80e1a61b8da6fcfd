"""Matching Networks (Vinyals et al. 2016, NeurIPS): cosine attention over the encoded support set, optionally
with full context embeddings; the equations and BatchNorm options are on :class:`MatchingNet`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fastadapt.algorithms import inner
from fastadapt.algorithms.base import MetaOutput, batch_metrics
from fastadapt.algorithms.predictors import recent, resize_window, slide, window_size
from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import ConfigError, DataError

DISTANCES = ("cosine", "dot", "euclidean")
ENCODE_MODES = ("meta_batch", "per_task")
FCE_INITS = ("pytorch", "orthogonal")
DEFAULT_WINDOW = 50  # support examples a predictor keeps for update() unless adapt saw more or configure() says so
_AFTER_RESET = "(after reset()); update it first"
LOG_EPS = 1e-8  # floor of the attention probability before its log: log(max(y_hat, LOG_EPS))


# --- the math, as free functions (leading dimensions ``...``, tasks, broadcast) ---------------------


def similarity(queries: Tensor, support: Tensor, distance: str = "cosine") -> Tensor:
    """``c(q, s)`` for every query and support item: ``[..., Q, D] x [..., S, D] -> [..., Q, S]``.

    ``cosine``: ``q.s / (|q| |s|)`` (the paper); ``dot``: ``q.s``; ``euclidean``: ``-|q - s|^2``.
    """
    if distance == "cosine":
        return F.normalize(queries, dim=-1, eps=1e-12) @ F.normalize(support, dim=-1, eps=1e-12).transpose(-1, -2)
    if distance == "dot":
        return queries @ support.transpose(-1, -2)
    if distance == "euclidean":
        sq = (
            (queries * queries).sum(-1, keepdim=True)
            + (support * support).sum(-1).unsqueeze(-2)
            - 2 * queries @ support.transpose(-1, -2)
        )
        return -sq.clamp_min(0)
    raise ConfigError(f"distance={distance!r} is not supported; choose one of {', '.join(DISTANCES)}")


def cosine_attention(queries: Tensor, support: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """The paper's attention kernel ``a(q, s_i) = softmax_i(scale * cos(q, s_i))``: ``[..., Q, D], [..., S, D] -> [...,
    Q, S]``.

    Each row sums to 1 over the support items.
    """
    return torch.softmax(scale * similarity(queries, support, "cosine"), dim=-1)


def attention_log_probs(weights: Tensor, support_onehot: Tensor, eps: float = LOG_EPS) -> Tensor:
    """``log(max(sum_i a_i y_i, eps))``: ``weights [..., Q, S]``, ``support_onehot [..., S, N] -> [..., Q, N]``.

    The attention-weighted sum of the one-hot support labels is a distribution over the N classes;
    its log (floored at ``log(eps)``) is the log-likelihood of each class.
    """
    return torch.log((weights @ support_onehot).clamp_min(eps))


def full_context_support(support: Tensor, lstm: nn.LSTM) -> Tensor:
    """FCE of the support set (appendix A.2): ``g(x_i, S) = h_fw_i + h_bw_i + g'(x_i)``.

    Args:
        support: ``[T, S, D]`` encoder outputs ``g'(x_i)`` of T support sequences.
        lstm: a bidirectional ``nn.LSTM(D, D, batch_first=True)`` (any number of layers).

    Returns ``[T, S, D]``: the forward and backward hidden states of the last layer at item i,
    plus the skip connection. Depends on the order of the support sequence.
    """
    out, _ = lstm(support)
    d = support.shape[-1]
    return out[..., :d] + out[..., d:] + support


def attention_lstm_queries(queries: Tensor, support: Tensor, cell: nn.LSTMCell, steps: int) -> Tensor:
    """FCE of the queries (appendix A.1): ``f(x_hat, S) = attLSTM(f'(x_hat), g(S), K)`` with ``K = steps``.

    Args:
        queries: ``[T, Q, D]`` encoder outputs ``f'(x_hat)``; all queries of all tasks run together.
        support: ``[T, S, D]`` the (full-context) support embeddings ``g(x_i, S)`` of each task.
        cell: ``nn.LSTMCell(2 * D, D)``: input ``[f'(x_hat), r_{k-1}]``, hidden ``h_{k-1}``, cell ``c_{k-1}``.
        steps: K >= 1.

    Starting from ``h_0 = f'(x_hat)``, ``c_0 = 0``, each step computes
    ``hat h_k, c_k = cell([f', r_{k-1}], (h_{k-1}, c_{k-1}))``, ``h_k = hat h_k + f'`` and the read
    ``r_k = sum_i softmax_i(h_k . g_i) g_i`` (dot-product attention over the task's own support).
    Returns ``h_K`` as ``[T, Q, D]``. (The paper's LSTM with hidden state ``[h, r]`` has gates linear in
    ``[f', h, r]``: an ``nn.LSTMCell`` with input ``[f', r]`` and hidden ``h``.)
    """
    t, q, d = queries.shape
    f = queries.reshape(t * q, d)

    def read(h: Tensor) -> Tensor:  # [T*Q, D] -> [T*Q, D]
        a = torch.softmax(h.view(t, q, d) @ support.transpose(-1, -2), dim=-1)
        return (a @ support).reshape(t * q, d)

    h, c = f, torch.zeros_like(f)
    r = read(h)
    for _ in range(steps):
        h_hat, c = cell(torch.cat([f, r], dim=-1), (h, c))
        h = h_hat + f
        r = read(h)
    return h.view(t, q, d)


# --- state and predictor of one task --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MatchingState:
    """The encoded support set of one task (or ``T`` tasks, with a leading dimension)."""

    embeddings: Tensor  # [S, D] support embeddings g(x_i, S) (full context when FCE is on)
    onehot: Tensor  # [S, N] one-hot support labels y_i in the embeddings' dtype


@dataclass(eq=False)
class MatchingPredictor:
    """``query_x [NQ, *x_shape] -> log-probabilities [NQ, N]`` for the task whose support set ``state`` holds.

    ``update(x, y)`` keeps adapting: the support set becomes a sliding window of the last ``window``
    labelled examples (``window_x``, ``window_y``), encoded again as one set (with full context
    embeddings, the LSTM reads the whole window), so an update on an empty window (after
    :meth:`reset`) equals ``net.adapt(x, y)``. A label beyond the known ones is a new class (the
    one-hot width grows); a class with no example left in the window gets the floor probability.
    Bounded memory: ``window`` examples; bounded work: one encoder pass over at most ``window``
    examples per update; no graph is kept. A rejected update leaves the state as it was.
    """

    net: MatchingNet = field(repr=False)
    state: MatchingState | None
    window_x: Tensor | None = None  # the support examples kept for update() (set by adapt)
    window_y: Tensor | None = None
    window: int = DEFAULT_WINDOW

    def __call__(self, query_x: Tensor) -> Tensor:
        if self.state is None:
            raise DataError(f"this Matching Networks predictor has no labelled example yet {_AFTER_RESET}")
        return self.net.query_log_probs(_batched(self.state), self.net.encode(query_x.unsqueeze(0)))[0]

    def configure(self, window: int | None = None) -> MatchingPredictor:
        """``window``: support examples kept (>= 1)."""
        if window is not None:
            resize_window(self, window)
            self._set_window(*self._window())
        return self

    def _window(self) -> tuple[Tensor, Tensor]:
        if self.window_x is None or self.window_y is None:
            raise DataError("this predictor keeps no window; build it with MatchingNet.adapt")
        return self.window_x, self.window_y

    def _set_window(self, x: Tensor, y: Tensor) -> None:
        if len(y):
            with torch.no_grad():
                state = self.net.support_state(self.net.encode(x.unsqueeze(0)), y.unsqueeze(0), int(y.max()) + 1)
            self.state = MatchingState(state.embeddings[0], state.onehot[0])
        else:
            self.state = None
        self.window_x, self.window_y = x.clone(), y.clone()

    def reset(self) -> None:
        """Forget the support set."""
        wx, wy = self._window()
        self._set_window(wx[:0], wy[:0])

    def update(self, x: Tensor, y: Tensor) -> None:
        """Add the labelled batch ``x [B, *x]``, ``y [B]`` to the window and encode it again; returns nothing."""
        self._set_window(*slide(*self._window(), x, y, self.window))

    def explain(self, x: Tensor) -> dict[str, Any]:
        """``attention [Q, S]``: the weights ``a(x_hat, x_i)`` of each query over the support examples (rows sum
        to 1; after the full context embeddings when ``fce``): ``attention @ onehot`` is the output."""
        if self.state is None:
            raise ConfigError("this Matching Networks predictor holds no support example; adapt it first")
        with torch.no_grad():
            z = self.net.encode(x.unsqueeze(0))
            attention = self.net.attention(_batched(self.state), z)[0]
        notes = (
            ["full context embeddings: attention after the support LSTM and the attention LSTM"] if self.net.fce else []
        )
        return {"kind": "attention", "attention": attention, "attribute": False, "notes": notes}


def _batched(state: MatchingState) -> MatchingState:
    """One task's state with a leading task dimension of 1."""
    return MatchingState(state.embeddings.unsqueeze(0), state.onehot.unsqueeze(0))


# --- the algorithm --------------------------------------------------------------------------------------


class MatchingNet(nn.Module):
    """Matching Networks with optional full context embeddings.

    A query ``x_hat`` is classified by attention over the encoded support set ``S = {(x_i, y_i)}``:

    .. math::

        \\hat y = \\sum_i a(\\hat x, x_i)\\, y_i, \\qquad
        a(\\hat x, x_i) = \\operatorname{softmax}_i\\big(s \\cdot c(f(\\hat x, S), g(x_i, S))\\big)

    with ``y_i`` one-hot, ``c`` the cosine similarity (eq. 1-2 of the paper) and ``s`` a scale (1 in the
    paper). ``log(max(y_hat, eps))`` is the log-likelihood the cross-entropy is taken of.

    Full context embeddings (FCE, appendix A) on the encoder's embeddings ``g'(x_i)``, ``f'(x_hat)``: the
    support set read by a bidirectional LSTM plus a skip connection (A.2, :func:`full_context_support`) and
    each query refined by ``K`` steps of an attention LSTM over it (A.1, :func:`attention_lstm_queries`).
    Without FCE, ``f = f'`` and ``g = g'``: a cosine-attention classifier over the encoder's outputs.

    BatchNorm. Which images the encoder sees together sets batch statistics (``track_running_stats=False``),
    so it is the ``encode`` option of ``meta_loss``: ``"meta_batch"`` (default: one forward over every image
    of the meta-batch) or ``"per_task"`` (each task's support set and query set on their own, as ``adapt`` and
    ``predict`` always encode, so an evaluation never depends on which tasks share a batch). ``adapt`` and
    ``predict`` run the encoder on copies of its buffers: they never update running statistics.

    Args:
        model: the encoder ``f' = g'``, an embedding network ``[B, *x_shape] -> [B, D]`` (outputs
            are flattened to D features), e.g. ``Conv4(out_features=None)``.
        fce: full context embeddings (bidirectional LSTM over the support set, attention LSTM for
            the queries; appendix A). Off: plain attention over the encoder outputs (``lstm_layers``
            and ``process_steps`` are then unused).
        lstm_layers: layers of the support set's bidirectional LSTM (the attention LSTM is one cell,
            as in A.1).
        process_steps: K, the attention LSTM's processing steps. ``None`` (default): one step per
            support example, ``K = |S| = N*K_shot``, read per batch; an int fixes K (cheaper for
            large support sets: the attention LSTM's graph grows with K).
        distance: ``cosine`` (the paper), ``dot`` or ``euclidean`` (negative squared distance): the
            similarity ``c`` inside the final attention.
        scale: ``s`` multiplying the similarities before the softmax (inverse temperature; 1 in the
            paper). Must be > 0.
        learn_scale: learn ``s`` (as ``log s``, initialised from ``scale``) with the other parameters.
        encode: how ``meta_loss`` batches the encoder, i.e. which BatchNorm statistics it trains
            with: ``meta_batch`` or ``per_task`` (see above).
        embedding_dim: D, needed with ``fce`` to build the LSTMs at construction (so the optimizer
            sees them). ``None``: ``model.embedding_dim``; an error if the model has no such attribute.
        normalize: L2-normalise the encoder's outputs ``f'``, ``g'`` before the FCE and the attention
            (False, the paper: the FCE LSTMs see the raw embeddings; the final cosine normalises anyway).
        fce_init: initialisation of the FCE LSTMs: ``"pytorch"`` (torch's default, uniform in
            ``+-1/sqrt(D)``) or ``"orthogonal"`` (orthogonal recurrent weights, Xavier-uniform input
            weights, zero biases but the forget gates' at 1).

    ``meta_loss`` returns the mean over tasks of the query cross-entropy ``-log y_hat[y]``; ``adapt`` returns a
    :class:`MatchingPredictor`; ``predict`` gives log-probabilities ``[T, N*Q, N]``."""

    needs_head: ClassVar[bool] = False
    variable_ways: ClassVar[bool] = True  # reads N from the support labels: variable-way episodes
    prefers_channels_last: ClassVar[bool] = True  # forward + one backward through the encoder: NHWC is faster on CPU
    predicts_task_by_task: ClassVar[str] = "auto"  # predict encodes task by task where "auto" loops (preflight)
    single_forward_loss: ClassVar[bool] = True  # meta_loss is one forward pass: preflight measures it on a probe task

    def __init__(
        self,
        model: nn.Module,
        fce: bool = True,
        lstm_layers: int = 1,
        process_steps: int | None = None,
        distance: str = "cosine",
        scale: float = 1.0,
        learn_scale: bool = False,
        encode: str = "meta_batch",
        embedding_dim: int | None = None,
        normalize: bool = False,
        fce_init: str = "pytorch",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model={type(model).__name__} is not an nn.Module; pass the encoder network")
        for name, value, options in (("distance", distance, DISTANCES), ("encode", encode, ENCODE_MODES)):
            if value not in options:
                raise ConfigError(f"{name}={value!r} is not supported; choose one of {', '.join(options)}")
        inner.check_steps("lstm_layers", lstm_layers, 1)
        if process_steps is not None:
            inner.check_steps("process_steps", process_steps, 1)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"scale={scale!r} is invalid; it must be a finite number > 0")
        if fce_init not in FCE_INITS:
            raise ConfigError(f"fce_init={fce_init!r} is not supported; choose one of {', '.join(FCE_INITS)}")
        if embedding_dim is None:
            embedding_dim = getattr(model, "embedding_dim", None)
            if fce and embedding_dim is None:
                raise ConfigError(
                    f"MatchingNet(fce=True) needs embedding_dim: {type(model).__name__} has no embedding_dim "
                    "attribute; pass embedding_dim=<features of model(x)>"
                )
        if embedding_dim is not None:
            inner.check_steps("embedding_dim", embedding_dim, 1)
        self.model = model
        self.fce, self.process_steps, self.distance, self.encode_mode = bool(fce), process_steps, distance, encode
        self.embedding_dim, self.normalize = embedding_dim, bool(normalize)
        self.fixed_scale: float | None = None if learn_scale else float(scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale))) if learn_scale else None
        if self.fce:
            d = int(embedding_dim)  # type: ignore[arg-type]
            self.support_lstm = nn.LSTM(d, d, num_layers=lstm_layers, batch_first=True, bidirectional=True)
            self.query_cell = nn.LSTMCell(2 * d, d)
            if fce_init == "orthogonal":
                _orthogonal_lstm_init(self.support_lstm)
                _orthogonal_lstm_init(self.query_cell)

    @property
    def encodes_meta_batch(self) -> bool:
        """``encode="meta_batch"``: meta_loss runs the encoder once over the whole meta-batch."""
        return self.encode_mode == "meta_batch"

    @property
    def scale(self) -> Tensor | float:
        """The similarity scale ``s``: the learnt ``exp(log_scale)``, or the fixed float."""
        return self.log_scale.exp() if self.log_scale is not None else self.fixed_scale  # type: ignore[return-value]

    # -- encoder -----------------------------------------------------------------------------

    def encode(self, x: Tensor, execution: str = "auto") -> Tensor:
        """Per-task encoding ``[T, M, *x_shape] -> [T, M, D]``: each ``x[t]`` is one encoder batch.

        Runs on per-task copies of the model's buffers, so the module (BatchNorm running statistics
        included) is never changed; dropout draws independent masks per task. ``execution``:
        ``"vmap"`` over tasks, ``"loop"`` over tasks, or ``"auto"``, which loops for images on the CPU
        (:func:`fastadapt.algorithms.inner.resolve_execution`; measured faster there: docs/PERFORMANCE.md).
        """
        t = x.shape[0]
        params = dict(self.model.named_parameters())
        if inner.resolve_execution(execution, x) == "loop":  # buffers copied per task: the module is never written
            return self._checked(torch.stack([inner.call(self.model, params, xt).flatten(1) for xt in x]))
        buffers = {k: b.unsqueeze(0).expand(t, *b.shape).clone() for k, b in self.model.named_buffers()}

        def one(bufs: dict[str, Tensor], xt: Tensor) -> Tensor:
            return functional_call(self.model, (params, bufs), (xt,)).flatten(1)

        return self._checked(vmap(one, randomness="different")(buffers, x))

    def _encode_together(self, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """One encoder forward over all support and query images of all tasks: ``[T, S, D], [T, Q, D]``."""
        t, s, q = support_x.shape[0], support_x.shape[1], query_x.shape[1]
        z = self.model(torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)])).flatten(1)
        z = self._checked(z)
        return z[: t * s].view(t, s, -1), z[t * s :].view(t, q, -1)

    def _checked(self, z: Tensor) -> Tensor:
        if self.embedding_dim is not None and z.shape[-1] != self.embedding_dim:
            raise ConfigError(
                f"the model outputs {z.shape[-1]} features but embedding_dim={self.embedding_dim}; "
                f"pass embedding_dim={z.shape[-1]}"
            )
        return z

    # -- the classifier on embeddings --------------------------------------------------------

    def support_state(self, support: Tensor, support_y: Tensor, ways: int) -> MatchingState:
        """Encoded support sets ``[T, S, D]`` (``g'``) and labels ``[T, S]`` -> batched :class:`MatchingState`
        (``g``)."""
        if self.normalize:
            support = F.normalize(support, dim=-1, eps=1e-12)
        g = full_context_support(support, self.support_lstm) if self.fce else support
        return MatchingState(g, F.one_hot(support_y.long(), ways).to(g.dtype))

    def attention(self, state: MatchingState, queries: Tensor) -> Tensor:
        """``a(x_hat, x_i)``: query embeddings ``[T, Q, D]`` (``f'``) -> weights ``[T, Q, S]``, rows summing to 1."""
        g = state.embeddings
        if self.normalize:
            queries = F.normalize(queries, dim=-1, eps=1e-12)
        if self.fce:
            steps = self.process_steps if self.process_steps is not None else g.shape[-2]
            queries = attention_lstm_queries(queries, g, self.query_cell, steps)
        return torch.softmax(self.scale * similarity(queries, g, self.distance), dim=-1)

    def query_log_probs(self, state: MatchingState, queries: Tensor) -> Tensor:
        """Query embeddings ``[T, Q, D]`` (``f'``) -> log-probabilities ``[T, Q, N]``."""
        return attention_log_probs(self.attention(state, queries), state.onehot)

    # -- the contract --------------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        """Mean over tasks of the query cross-entropy; metrics ``loss`` and ``acc``."""
        _check_labels(batch.support_y)
        ways = int(batch.support_y.max()) + 1
        if self.encode_mode == "meta_batch":
            zs, zq = self._encode_together(batch.support_x, batch.query_x)
        else:
            zs, zq = self.encode(batch.support_x), self.encode(batch.query_x)
        logp = self.query_log_probs(self.support_state(zs, batch.support_y, ways), zq)
        # equal query counts: the mean over tasks of the task means
        loss = F.nll_loss(logp.flatten(0, 1), batch.query_y.flatten())
        return MetaOutput(loss, batch_metrics(logp, batch.query_y, loss))

    def adapt(self, support_x: Tensor, support_y: Tensor) -> MatchingPredictor:
        """One task: ``support_x [N*K, *x]``, ``support_y [N*K]`` -> predictor ``query_x -> [NQ, N]`` log-probabilities.

        The state is the encoded support set; the module is not changed. Differentiable (the state
        keeps its graph); wrap in ``torch.no_grad()`` to evaluate.
        """
        _check_labels(support_y)
        state = self.support_state(
            self.encode(support_x.unsqueeze(0)), support_y.unsqueeze(0), int(support_y.max()) + 1
        )
        window = window_size(support_y, default=DEFAULT_WINDOW)
        one = MatchingState(state.embeddings[0], state.onehot[0])
        return MatchingPredictor(self, one, *recent(support_x, support_y, window), window)

    def predict(self, batch: TaskBatch) -> Tensor:
        """Log-probabilities ``[T, N*Q, N]`` of every task's queries; equal to ``adapt(support)(query)`` task by
        task."""
        _check_labels(batch.support_y)
        with torch.no_grad():
            state = self.support_state(self.encode(batch.support_x), batch.support_y, int(batch.support_y.max()) + 1)
            return self.query_log_probs(state, self.encode(batch.query_x))


def _orthogonal_lstm_init(lstm: nn.Module) -> None:
    """Orthogonal recurrent weights (per gate), Xavier-uniform input weights, zero biases, forget-gate biases 1."""
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("weight_hh"):
                for gate in p.chunk(4, dim=0):
                    nn.init.orthogonal_(gate)
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("bias"):
                p.zero_()
                if name.startswith("bias_ih"):
                    h = p.shape[0] // 4
                    p[h : 2 * h] = 1.0  # torch's gate order: input, forget, cell, output


def _check_labels(y: Tensor) -> None:
    if y.is_floating_point():
        raise ConfigError(
            f"MatchingNet classifies; support labels are {y.dtype} (a regression task); use integer class labels 0..N-1"
        )


__all__ = [
    "MatchingNet",
    "MatchingPredictor",
    "MatchingState",
    "attention_log_probs",
    "attention_lstm_queries",
    "cosine_attention",
    "full_context_support",
    "similarity",
]
