"""Request bodies of the /v1 API: checked against schemas/chat_request.schema.json and
completion_request.schema.json, then against what webmoe can honour. Every field is either used or refused
with a 400 that names it; none is silently ignored."""
from __future__ import annotations

from dataclasses import dataclass, field

from webmoe.engine.constraint import json_grammar
from webmoe.engine.errors import PromptError
from webmoe.format.strict_json import check_schema, parse_json

from .api_errors import ApiError

MAX_REQUEST_BYTES = 16 << 20


@dataclass
class GenerationRequest:
    """What a chat or text completion asks of the engine. prompts: one per choice group (chat: the one
    message list; completions: each prompt string); each gets n choices, choice i seeded with seed + i."""
    kind: str                          # "chat" | "text"
    model: str | None
    prompts: list
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None        # None: none; k: each token's and the k most likely
    sampling: dict = field(default_factory=dict)      # max_new_tokens, temperature, top_p, stop, grammar
    seed: int | None = None
    user: str | None = None            # the end user, as the client names them (an A/B route's cohort key)


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(message, 400, param=param)


def _check_text(value: str, where: str) -> None:
    """Strings must be encodable text: JSON escapes can carry lone surrogates, which no tokenizer reads."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{where} is not valid Unicode text (it holds a lone surrogate)", where) from None


def _unsupported(body: dict) -> None:
    """Fields the schemas accept but webmoe cannot honour: refused, never ignored."""
    for penalty in ("frequency_penalty", "presence_penalty"):
        if body.get(penalty):
            raise _bad(f"{penalty} is not supported (only 0)", penalty)
    if body.get("logit_bias"):
        raise _bad("logit_bias is not supported", "logit_bias")
    if body.get("echo"):
        raise _bad("echo is not supported", "echo")


def _body(raw: bytes, schema: str) -> dict:
    body = parse_json(raw, "the request body", ApiError, MAX_REQUEST_BYTES)
    check_schema(body, schema, "request", ApiError)
    _unsupported(body)
    stop = body.get("stop")
    for s in [stop] if isinstance(stop, str) else stop or []:
        _check_text(s, "stop")
    return body


def _common(body: dict, kind: str, prompts: list, default_max: int) -> GenerationRequest:
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max
    temperature, top_p = body.get("temperature"), body.get("top_p")
    return GenerationRequest(
        kind=kind, model=body.get("model"), prompts=prompts, n=body.get("n") or 1, stream=bool(body.get("stream")),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")), seed=body.get("seed"),
        user=body.get("user"),
        sampling={"max_new_tokens": max_tokens, "temperature": 1.0 if temperature is None else temperature,
                  "top_p": 1.0 if top_p is None else top_p, "stop": body.get("stop")})


def _grammar(response_format: dict | None) -> str | None:
    """The grammar constrained decoding holds the answer to (engine/constraint.py): any JSON object for
    json_object, JSON matching the schema for json_schema (always enforced, `strict` or not); None for text."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    try:
        return json_grammar(response_format["json_schema"].get("schema", {}) if kind == "json_schema" else None)
    except PromptError as e:
        raise _bad(f"response_format: {e}", "response_format") from None


def parse_chat(raw: bytes) -> GenerationRequest:
    body = _body(raw, "chat_request")
    messages = []
    for i, m in enumerate(body["messages"]):
        content = m["content"]
        if isinstance(content, list):     # content parts: text only
            for j, part in enumerate(content):
                if part["type"] != "text" or "text" not in part or set(part) != {"type", "text"}:
                    raise _bad(f"messages/{i}/content/{j}: only text content parts are supported "
                               f"(got type {part['type']!r})", f"messages/{i}/content")
            content = "".join(part["text"] for part in content)
        _check_text(content, f"messages/{i}/content")
        messages.append({"role": m["role"], "content": content})
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise _bad("top_logprobs needs logprobs: true", "top_logprobs")
    req = _common(body, "chat", [messages], 256)
    req.sampling["grammar"] = _grammar(body.get("response_format"))
    if body.get("logprobs"):
        req.logprobs = body.get("top_logprobs") or 0
    return req


def parse_completion(raw: bytes) -> GenerationRequest:
    body = _body(raw, "completion_request")
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    for i, p in enumerate(prompts):
        _check_text(p, f"prompt/{i}")
    req = _common(body, "text", prompts, 16)      # OpenAI's default for completions
    req.logprobs = body.get("logprobs")
    return req
