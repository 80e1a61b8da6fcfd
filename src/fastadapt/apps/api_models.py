"""The web app's API as a contract: a pydantic model for every request body and every JSON response.

FastAPI validates each request against these models and each response too (a response that breaks its
model is a bug: a 500, which the Schemathesis test in ``tests/test_serve_contract.py`` looks for), and
serves the OpenAPI schema built from them at ``/openapi.json``. Every error is :class:`Error`, one line;
:func:`validation_message` turns pydantic's list of errors into that line. Request bodies refuse unknown
keys and take integers and strings strictly (``"1"`` is not a class id, ``true`` is not 1).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from fastadapt.eval.explanations import ATTRIBUTIONS

Attribution = Literal[ATTRIBUTIONS]  # type: ignore[valid-type]  # auto, integrated_gradients, gradient, none
Source = Literal["draw", "upload"]  # what a person says an uploaded image is
MAX_K = 50  # pool examples a round may propose
MAX_ID = 2**63 - 1  # SQLite's largest integer


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- request bodies -----------------------------------------------------------------------------------


class NewClass(_Body):
    """``POST /api/classes``: a class name (1 to 64 printable characters after trimming; any script)."""

    name: StrictStr


class ClassChoice(_Body):
    """``PATCH /api/examples/{id}`` and ``POST /api/pool/{index}/label``: the class an example belongs to."""

    class_id: Annotated[StrictInt, Field(ge=0, le=MAX_ID)]


# --- responses ----------------------------------------------------------------------------------------


class Error(BaseModel):
    """Every 4xx: one line saying what was wrong and, where there is one, the fix."""

    detail: str


class ExampleRef(BaseModel):
    id: int
    source: str  # draw | upload | pool | import


class ClassInfo(BaseModel):
    id: int
    name: str
    examples: list[ExampleRef]


class RunInfo(BaseModel):
    path: str
    algorithm: str
    weights: str  # best.pt, checkpoint.pt or weights.safetensors
    step: int | None  # the training step the weights are from (None when not recorded)
    input_shape: list[int]


class PoolInfo(BaseModel):
    source: str
    size: int
    held_out: int
    labelled: list[int]  # pool indices labelled by the person


class OpenRound(BaseModel):
    id: int
    proposed: list[int]


class RoundRecord(BaseModel):
    id: int
    proposed: list[int]
    labelled: int | None
    acc_uncertainty: float | None
    acc_random: float | None
    evaluated: int | None
    closed: bool


class State(BaseModel):
    """``GET /api/state``: everything the page draws, read at one ``revision`` (bumped by every write)."""

    revision: int
    run: RunInfo
    classes: list[ClassInfo]
    pool: PoolInfo
    round: OpenRound | None
    rounds: list[RoundRecord]
    latency_ms: dict[str, float]


class ClassCreated(BaseModel):
    id: int
    name: str


class ExampleCreated(BaseModel):
    id: int


class Relabelled(BaseModel):
    id: int
    class_id: int


class ClassProbability(BaseModel):
    id: int
    name: str
    probability: float


class ClassRef(BaseModel):
    id: int
    name: str


class PredictLatency(BaseModel):
    adapt: float
    predict: float
    explain: float


class SupportRef(BaseModel):
    class_id: int


class ExplanationView(BaseModel):
    """The explanation of one prediction (:func:`fastadapt.eval.explanations.explain`); the optional parts are there
    when the algorithm gives them (distances: ProtoNet; attention: Matching Networks; layers: gradient-based)."""

    kind: str
    algorithm: str
    notes: list[str]
    support: list[SupportRef]
    distances: list[float] | None = None
    attention: list[float] | None = None
    attribution: dict[str, Any] | None = None  # method, target, output, sum, map [H][W] (and IG's baseline, delta)
    layers: list[dict[str, Any]] | None = None  # name, change, relative


class Prediction(BaseModel):
    probabilities: list[ClassProbability]
    predicted: ClassRef
    latency_ms: PredictLatency
    explanation: ExplanationView


class Proposal(BaseModel):
    pool_index: int
    guess: int  # the class id the model predicts
    probabilities: list[float]  # in the order of class_ids


class RoundView(BaseModel):
    id: int
    proposed: list[int]
    todo: list[Proposal]  # the proposed pool examples not labelled yet
    class_ids: list[int]


class RoundScores(BaseModel):
    id: int
    labelled: int
    evaluated: int
    acc_uncertainty: float | None
    acc_random: float | None


class PoolLabelled(BaseModel):
    id: int
    adapt_ms: float
    round: RoundScores | None = None  # the round this label closed


class Imported(BaseModel):
    classes: int
    examples: int
    from_run: str


# --- documentation of responses -----------------------------------------------------------------------


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each an :class:`Error`."""
    words = {
        400: "the request cannot be served (one line says why)",
        401: "a request from another machine without the server's token",
        404: "no such class, example, round or pool example",
        409: "the request contradicts the state (a duplicate name, a pool example labelled twice, no example yet)",
        411: "a request body without a Content-Length",
        413: "a request body over the limit",
        422: "the request does not fit its model, or an image or a task file does not decode",
    }
    return {c: {"model": Error, "description": words[c]} for c in codes}


def binary(media_type: str, what: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a 200 with a body of ``media_type`` (an image, a file)."""
    return {200: {"description": what, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


def validation_message(errs: list[Any]) -> str:
    """Pydantic's errors as one line: ``where: what (found ...)`` for each, ``;``-separated, at most 400 characters."""
    parts = []
    for e in errs:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form")]
        where = ".".join(loc) or "the body"
        found = e.get("input")
        shown = "" if e.get("type") == "missing" or isinstance(found, (dict, list)) else f" (found {found!r:.60})"
        parts.append(f"{where}: {e.get('msg', 'invalid')}{shown}")
    line = " ".join("; ".join(parts).splitlines())
    return line if len(line) <= 400 else line[:397] + "..."


__all__ = [
    "MAX_ID",
    "MAX_K",
    "Attribution",
    "ClassChoice",
    "ClassCreated",
    "ClassInfo",
    "Error",
    "ExampleCreated",
    "ExplanationView",
    "Imported",
    "NewClass",
    "PoolLabelled",
    "Prediction",
    "Relabelled",
    "RoundScores",
    "RoundView",
    "Source",
    "State",
    "binary",
    "errors",
    "validation_message",
]
