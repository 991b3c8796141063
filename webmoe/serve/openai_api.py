"""OpenAI-compatible endpoints on the native engine: GET /v1/models, POST /v1/chat/completions (with
`stream: true` as server-sent events). Each package's engine loads on first use; one generation runs at
a time per engine, in a worker thread, so the event loop keeps serving files meanwhile."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

from aiohttp import web

from webmoe.engine.engine import Engine
from webmoe.engine.errors import USER_ERRORS
from webmoe.engine.strict_json import check_schema, parse_json


class ApiError(web.HTTPBadRequest):
    def __init__(self, message: str, status: int = 400):
        super().__init__(text=json.dumps({"error": {"message": message, "type": "invalid_request_error"}}),
                         content_type="application/json")
        self.set_status(status)


class Models:
    def __init__(self, dirs: dict[str, Path], adapter: str | None = None, expert_cache_bytes: int | None = None):
        self.dirs, self.adapter, self.expert_cache_bytes = dirs, adapter, expert_cache_bytes
        self.engines: dict[str, Engine] = {}
        self.locks = {name: asyncio.Lock() for name in dirs}

    async def engine(self, name: str) -> Engine:
        if name not in self.engines:
            self.engines[name] = await asyncio.to_thread(Engine.load, self.dirs[name], self.adapter,
                                                         expert_cache_bytes=self.expert_cache_bytes)
            print(f"webmoe: loaded {self.engines[name].describe()}", flush=True)   # the server's console
        return self.engines[name]


MAX_REQUEST_BYTES = 16 << 20


def _check_text(value, where: str) -> None:
    """Strings must be encodable text: JSON escapes can carry lone surrogates, which no tokenizer reads."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(f"{where} is not valid Unicode text (it holds a lone surrogate)") from None


def parse_request(raw: bytes) -> dict:
    """The generation arguments of a chat completion request body, checked against
    schemas/chat_request.schema.json; any bad or unsupported field is an ApiError (400) that names it."""
    body = parse_json(raw, "the request body", ApiError, MAX_REQUEST_BYTES)
    check_schema(body, "chat_request", "request", ApiError)
    for i, m in enumerate(body["messages"]):
        _check_text(m["content"], f"messages/{i}/content")
    stop = body.get("stop")
    for s in [stop] if isinstance(stop, str) else stop or []:
        _check_text(s, "stop")
    return {"model": body.get("model"), "stream": body.get("stream", False),
            "messages": [{"role": m["role"], "content": m["content"]} for m in body["messages"]],
            "max_new_tokens": body.get("max_tokens", body.get("max_completion_tokens", 256)),
            "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
            "seed": body.get("seed"), "stop": stop}


def add_routes(app: web.Application, dirs: dict[str, Path], adapter: str | None = None,
               expert_cache_bytes: int | None = None) -> None:
    models = Models(dirs, adapter, expert_cache_bytes)

    async def list_models(request):
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "webmoe"} for name in dirs]})

    async def chat(request):
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            raise ApiError(f"the request body is larger than {MAX_REQUEST_BYTES} bytes", 413)
        args = parse_request(await request.read())
        stream = args.pop("stream")
        name = args.pop("model") or next(iter(dirs), None)
        if name not in dirs:
            raise ApiError(f"unknown model {name!r}; served: {', '.join(dirs)}", 404)
        async with models.locks[name]:
            try:
                engine = await models.engine(name)
                gen = engine.generate(args.pop("messages"), **args)
            except USER_ERRORS as e:
                raise ApiError(str(e)) from None
            meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name}
            if stream:
                return await _stream(request, gen, meta)
            tokens = await asyncio.to_thread(lambda: [t.text for t in gen])
            return web.json_response({
                **meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                             "finish_reason": gen.finish_reason}],
                "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                          "total_tokens": gen.prompt_tokens + gen.completion_tokens}})

    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat)


async def _stream(request, gen, meta) -> web.StreamResponse:
    """Runs the generator in a thread, sending each token as an SSE chunk; a client that goes away stops it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()

    def produce():
        try:
            for token in gen:
                if cancelled.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, ("token", token.text))
        except Exception as e:  # reported to the client as the stream's last event
            loop.call_soon_threadsafe(queue.put_nowait, ("error", str(e)))
        loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    worker = loop.run_in_executor(None, produce)

    def chunk(delta, finish=None):
        return ("data: " + json.dumps({**meta, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n").encode()
    try:
        await resp.write(chunk({"role": "assistant", "content": ""}))
        while True:
            kind, value = await queue.get()
            if kind == "token" and value:
                await resp.write(chunk({"content": value}))
            elif kind == "error":
                await resp.write(("data: " + json.dumps({"error": {"message": value}}) + "\n\n").encode())
            elif kind == "end":
                break
        await resp.write(chunk({}, gen.finish_reason))
        await resp.write(b"data: [DONE]\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        cancelled.set()
        raise
    finally:
        cancelled.set()
        await worker
    return resp
