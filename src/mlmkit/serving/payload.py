"""What a fill-mask or score request may say, and how the server reads it: the body streamed under a
size limit and a timeout, the payload checked by a Pydantic model (which is also the OpenAPI
schema) under the server's `Limits`, and every refusal an `ApiError` whose message names the
field as the client wrote it.

Pydantic and Starlette are imported inside the functions, so `import mlmkit.serving.payload` works
without the `serve` extra installed.
"""

import asyncio
import json
import re
from contextlib import aclosing
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Union

from mlmkit.config import ServeConfig
from mlmkit.inference.engine import clip
from mlmkit.inference.fill import count_masks
from mlmkit.inference.params import FillParams, InvalidParam, ScoreParams
from mlmkit.settings import named

if TYPE_CHECKING:
    from starlette.requests import Request

_DEFAULT_TOP_K = 5  # the pipeline's and the HF API's default
_MAX_DIGITS = 100  # longest integer read from a body: no field takes more


class ApiError(Exception):
    """A request the server refuses, answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; past these the server answers 4xx instead of working."""

    max_inputs: int = ServeConfig.max_inputs
    max_text_chars: int = ServeConfig.max_text_chars
    max_top_k: int = ServeConfig.max_top_k
    max_candidates: int = ServeConfig.max_candidates  # a text: masks x top_k
    max_request_candidates: int = ServeConfig.max_request_candidates  # all its texts together
    max_response_mb: float = ServeConfig.max_response_mb
    max_score_work: int = ServeConfig.max_score_work  # tokens x masked copies, all texts

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * 1e6)

    @property
    def max_body_bytes(self) -> int:
        # Worst case of JSON-escaped text (\uXXXX: 6 bytes a character) plus room for the rest.
        return self.max_inputs * (6 * self.max_text_chars + 8) + 65536


def _one_or_many(value: Any) -> str:
    return "many" if isinstance(value, list) else "one"


def request_model(limits: Limits) -> type:
    """The Pydantic model of a fill-mask payload under `limits`: what checks a request is also
    what the OpenAPI schema shows, limits included."""
    return _request_models(limits)["fill"]


def score_request_model(limits: Limits) -> type:
    """The Pydantic model of a `/score` payload under `limits`."""
    return _request_models(limits)["score"]


@lru_cache(maxsize=16)
def _request_models(limits: Limits) -> dict[str, type]:
    from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

    def one_or_many(item: Any, most: int, description: str) -> Any:
        # Tagged rather than a plain union, so an error names one branch: the one the client
        # meant, by whether a list was sent.
        return Annotated[Union[Annotated[item, Tag("one")],  # noqa: UP007
                               Annotated[list[item], Field(min_length=1, max_length=most),
                                         Tag("many")]],
                         Discriminator(_one_or_many), Field(description=description)]

    # A str field also refuses a lone surrogate (a JSON escape such as "\ud800" alone, which
    # Python's json reads into a str no codec can encode, and which would fail the tokenizer
    # and the whole batch it is in): pydantic-core takes only what UTF-8 can carry.
    text = Annotated[str, Field(max_length=limits.max_text_chars)]
    word = Annotated[str, Field(min_length=1)]
    strict = ConfigDict(extra="forbid", strict=True)  # no "3" taken for 3, no true for 1

    class FillParameters(BaseModel):
        model_config = strict
        top_k: int | None = Field(_DEFAULT_TOP_K, ge=1, le=limits.max_top_k,
                                  description="candidates per mask")
        targets: one_or_many(word, limits.max_inputs * limits.max_top_k,  # type: ignore
                             "only score these words") | None = None

    class FillRequest(BaseModel):
        model_config = ConfigDict(**strict, json_schema_extra={"examples": [
            {"inputs": "The goal of life is <mask>.", "parameters": {"top_k": 3}}]})
        inputs: one_or_many(text, limits.max_inputs,  # type: ignore
                            "a text with <mask> (or [MASK]), or a list of them")
        parameters: FillParameters | None = None
        options: Any = Field(None, description="the HF API's options (use_cache, ...): ignored")

    class ScoreParameters(BaseModel):
        model_config = strict
        metric: str | None = Field("original", description="original, word-l2r or whole-word")
        per_token: bool | None = Field(False, description="add each token's log-probability")

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(**strict, json_schema_extra={"examples": [
            {"inputs": ["The cat sat on the mat.", "The cat sat in the mat."],
             "parameters": {"metric": "word-l2r"}}]})
        inputs: one_or_many(text, limits.max_inputs,  # type: ignore
                            "a text to score, or a list of them")
        parameters: ScoreParameters | None = None
        options: Any = Field(None, description="ignored, as on the fill-mask route")

    return {"fill": FillRequest, "score": ScoreRequest}


def parse_score_request(body: bytes, limits: Limits) -> tuple[list[str], bool, ScoreParams]:
    """Check a `/score` payload -> (texts, single, params); an `ApiError` names what is
    wrong."""
    req = _validated(body, limits, score_request_model(limits), "score")
    single = isinstance(req.inputs, str)
    p = req.parameters
    params = _task_params(ScoreParams, metric=p.metric if p and p.metric else "original",
                          per_token=bool(p and p.per_token))
    return ([req.inputs] if single else req.inputs), single, params


def _task_params(cls: type, **values: Any) -> Any:
    """The task's parameters, checked by their own type (the one place their rules live); a
    refusal names the field where the request has it."""
    try:
        return cls(**values)
    except InvalidParam as e:
        raise ApiError(400, f"'parameters.{e.field}': {e}") from None


def _validated(body: bytes, limits: Limits, model: type, route: str) -> Any:
    from pydantic import ValidationError

    if len(body) > limits.max_body_bytes:
        raise _too_large(len(body), limits)
    payload = _load_json(body)
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise _refusal(e.errors(include_url=False), limits, route) from None


def parse_request(body: bytes, limits: Limits, mask_token: str | None = None,
                  vocab_size: int | None = None) -> tuple[list[str], bool, FillParams]:
    """Check a fill-mask payload -> (texts, single, params); an `ApiError` names what is
    wrong. `single` is whether `inputs` was one string (the answer is then not nested)."""
    req = _validated(body, limits, request_model(limits), "fill")
    single = isinstance(req.inputs, str)
    texts = [req.inputs] if single else req.inputs
    masks = [count_masks(t, mask_token) for t in texts]
    for i, (t, m) in enumerate(zip(texts, masks)):
        if not m:
            where = "'inputs'" if single else f"'inputs'[{i}]"
            raise ApiError(400, f"{where}: no mask in {clip(t)!r}: expected <mask> or [MASK]")
    p = req.parameters
    top_k = _DEFAULT_TOP_K if p is None or p.top_k is None else p.top_k
    if vocab_size:
        top_k = min(top_k, vocab_size)  # a tiny vocabulary has fewer candidates than asked
    targets = None if p is None else p.targets
    params = _task_params(FillParams, top_k=top_k, targets=targets,
                          max_candidates=limits.max_candidates)
    _check_candidates(texts, masks, single, params, limits)
    return texts, single, params


def _check_candidates(texts: list[str], masks: list[int], single: bool, params: FillParams,
                      limits: Limits) -> None:
    """Refuse a request whose answer would cost more than the server's limits, before it is
    queued: each candidate (masks x top_k) is a record of the whole text, decoded and sent, so
    a 32 KB request of masks alone could otherwise take minutes of the engine and gigabytes."""
    choices = None if params.targets is None else len(set(params.targets))
    total = params.candidates(sum(masks), choices)
    if total > limits.max_request_candidates:
        raise ApiError(413, f"'inputs': {len(texts):,} text{'s' * (len(texts) != 1)} with "
                            f"{sum(masks):,} masks x top_k {total // sum(masks)} = {total:,} "
                            "candidates, more than the server's limit of "
                            f"{limits.max_request_candidates:,} a request "
                            f"({named('max_request_candidates')})")
    for i, (t, m) in enumerate(zip(texts, masks)):
        problem = params.over_budget(m, choices)  # the engine's own rule, before the queue
        if problem:
            where = "'inputs'" if single else f"'inputs'[{i}]"
            raise ApiError(422, f"{where}: {clip(t)!r}: {problem}")


def _too_large(size: int | None, limits: Limits) -> ApiError:
    return ApiError(413, f"request body of {'more than ' if size is None else ''}"
                         f"{limits.max_body_bytes if size is None else size} bytes, more than "
                         f"the server's limit of {limits.max_body_bytes}")


def _json_int(digits: str) -> int:
    # Python's int() refuses a number past 4,300 digits (a ValueError from inside json.loads)
    # and is slow well before that.
    if len(digits) > _MAX_DIGITS:
        raise ApiError(400, f"malformed JSON body: a number of {len(digits)} digits, more "
                            f"than the {_MAX_DIGITS} this server reads")
    return int(digits)


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_int=_json_int)
    except RecursionError:  # json's parser recurses once per nested [ or {
        raise ApiError(400, "malformed JSON body: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ApiError(400, f"malformed JSON body: {e}") from None


# What each field takes, for a type error: (field, whether the error is at an item of it).
_EXPECTED = {("inputs", False): "a string or a non-empty list of strings",
             ("inputs", True): "a string",
             ("parameters", False): "an object",
             ("top_k", False): "an integer",
             ("targets", False): "a string or a non-empty list of non-empty strings",
             ("targets", True): "a non-empty string",
             ("metric", False): "a string: original, word-l2r or whole-word",
             ("per_token", False): "true or false"}
# Per route: (its parameters, what 'inputs' holds)
_ROUTES = {"fill": ("top_k and targets", "a text with <mask>, or a list of them"),
           "score": ("metric and per_token", "a text to score, or a list of them")}


def _refusal(errors: list[dict], limits: Limits, route: str = "fill") -> ApiError:
    """Pydantic's first complaint about a payload as one message naming the field as the client
    wrote it ('inputs'[2], 'parameters.top_k'); unknown fields first, as they are likely
    typos that explain the rest."""
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        parent = extra[0]["loc"][:-1]
        names = ", ".join(sorted(repr(clip(e["loc"][-1], 30)) for e in extra
                                 if e["loc"][:-1] == parent)[:5])
        if parent:
            return ApiError(400, f"unknown parameter(s) {names}: expected {_ROUTES[route][0]}")
        return ApiError(400, f"unknown field(s) {names}: expected 'inputs' and optionally "
                             "'parameters'")
    err = errors[0]
    kind, value = err["type"], err.get("input")
    names = [p for p in err["loc"] if isinstance(p, str) and p not in ("one", "many")]
    index = [p for p in err["loc"] if isinstance(p, int)]
    where = "'" + ".".join(names) + "'" + "".join(f"[{i}]" for i in index)
    lone = [c for c in value if 0xD800 <= ord(c) <= 0xDFFF] if isinstance(value, str) else []
    if kind == "string_unicode" and lone:
        problem = (f"a lone surrogate \\u{ord(lone[0]):04x} at character {value.index(lone[0])}: "
                   "not Unicode text (JSON escapes of surrogates come in pairs)")
        if names and names != ["parameters"]:
            return ApiError(400, f"{where}: {problem}")
        # Reported at an object (the body, 'parameters'): the string is one of its keys.
        inside = f" in {where}" if names else ""
        return ApiError(400, f"a field name{inside} with {problem}")
    if not names:  # the body itself
        example = "Paris is the <mask> of France." if route == "fill" else "Paris is in France."
        return ApiError(400, f'expected a JSON object like {{"inputs": "{example}"}}, got '
                             f'{_describe(value)}')
    if kind == "missing":
        return ApiError(400, f"missing {where}: expected {_ROUTES[route][1]}")
    if kind == "too_long" and isinstance(value, list):
        what, most = (("texts", limits.max_inputs) if names[-1] == "inputs"
                      else ("words", limits.max_inputs * limits.max_top_k))
        return ApiError(413, f"{where}: {len(value)} {what}, more than the server's limit of "
                             f"{most}" + (" per request" if what == "texts" else ""))
    if kind in ("too_long", "string_too_long"):
        return ApiError(413, f"{where}: {len(value)} characters, more than the server's limit "
                             f"of {limits.max_text_chars}")
    if kind in ("greater_than_equal", "less_than_equal"):
        return ApiError(400, f"{where} {_describe(value)}: expected 1 to {limits.max_top_k}")
    expected = _EXPECTED.get((names[-1], bool(index)))
    if expected:
        return ApiError(400, f"{where}: expected {expected}, got {_describe(value)}")
    return ApiError(400, f"{where}: {err['msg']}")


def _describe(value: Any) -> str:
    """A JSON value in a few words, never the whole of what may be huge or deeply nested."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return clip(repr(value))
    if isinstance(value, str):
        return clip(repr(value))  # the repr cut, as it may spell each character in 6
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    return "an object" if isinstance(value, dict) else type(value).__name__


async def read_body(request: "Request", limits: Limits, timeout_s: float) -> bytes:
    """The request's body, read as it arrives: 413 as soon as it passes the limit (a chunked
    body has no Content-Length to check first) and 408 if it is not all there within
    `timeout_s` (a client trickling bytes would hold a connection and a buffer for ever)."""
    from starlette.requests import ClientDisconnect

    kind = request.headers.get("content-type")
    if kind is None or kind.split(";")[0].strip().lower() != "application/json":
        # Not only a matter of form: a web page may POST text/plain (or a form) to a local
        # server without the browser asking it first (no CORS preflight); JSON it may not.
        raise ApiError(415, ("no content type" if kind is None else
                             f"content type {clip(kind)!r}") + ": expected application/json")
    length = request.headers.get("content-length", "")
    if re.fullmatch(r"[0-9]{1,18}", length) and int(length) > limits.max_body_bytes:
        raise _too_large(int(length), limits)  # not read at all

    async def read() -> bytes:
        chunks, size = [], 0
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise _too_large(None, limits)
                chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"request body not complete after {timeout_s:g} s") from None
    except ClientDisconnect:
        raise ApiError(400, "client disconnected before the body was complete") from None


def check_score_work(texts: list[str], tokenizer: Any, limits: Limits) -> None:
    """Refuse a /score request whose texts would cost more than `limits.max_score_work`: a
    text of n tokens is n masked copies of n tokens, so its cost grows with the square of its
    length (8 texts of 400 tokens took minutes on a CPU). Counted with the model's own
    tokenizer before the request is queued."""
    if tokenizer is None:
        return
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    work = sum(n * n for n in lengths)
    if work > limits.max_score_work:
        raise ApiError(413, f"scoring these texts ({sum(lengths):,} tokens) would run "
                            f"{work:,} tokens through the model (each text its tokens squared), "
                            f"more than the server's limit of {limits.max_score_work:,} a "
                            f"request ({named('max_score_work')}); send fewer or shorter "
                            "texts")
