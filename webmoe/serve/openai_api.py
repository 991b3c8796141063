"""OpenAI-compatible endpoints on the native engine:

    GET  /v1/models, /v1/models/{id}       the served packages
    POST /v1/chat/completions              chat (stream, n, logprobs/top_logprobs, seed, stop, content parts)
    POST /v1/completions                   text completion (prompt or prompts, stream, n, logprobs, seed, stop)
    GET  /health                           the process answers
    GET  /ready                            which models are loaded; 200 once the packages were checked
    GET  /stats                            per model: requests, completed, cancelled, failed, rejected, tokens
    PUT  /admin/models/{id}                with admin keys: {"path": PACKAGE} serves a new version (hot swap)
    GET  /routes, POST /v1/feedback        A/B routes: per-arm statistics and tests; {"id", "positive"}

Models live in a Registry (registry.py): each engine loads on first use, and a name can be pointed at a
new version while requests run. Generation runs in each engine's worker thread (the event loop keeps
serving files meanwhile), where requests' sequences share forward passes (continuous batching,
batching.py), behind an Admission queue with a bound and a wait limit.
Any disconnect — a streaming client or one waiting for a whole answer — stops the generation at the next
token. Errors come in OpenAI's shape (api_errors.py); API keys and CORS are api_access.py's."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid

from aiohttp import web

from webmoe.engine.engine import Engine
from webmoe.engine.errors import USER_ERRORS
from webmoe.engine.generation import GenerationConfig
from webmoe.engine.routing import describe_routing
from webmoe.format.strict_json import parse_json

from .admission import ClientGone
from .api_errors import TYPES, ApiError
from .api_requests import MAX_REQUEST_BYTES, GenerationRequest, parse_chat, parse_completion
from .batching import BatchWorker, Work
from .registry import Registry
from .routes import Routes


def client_gone(request: web.Request) -> bool:
    """Whether the request's client has closed its connection (checked while it waits and while it runs)."""
    return request.transport is None or request.transport.is_closing()


class Job:
    """One request's sequences (prompts x n choices, choice i seeded with seed + i), decoded by the engine's
    BatchWorker alongside other requests'. Events go to an asyncio queue: ("token", choice, Token),
    ("done", choice, Sequence or None), ("error", message, status), ("end",)."""

    def __init__(self, engine: Engine, worker: BatchWorker, req: GenerationRequest):
        self.engine, self.worker, self.req = engine, worker, req
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.cancelled_early = False         # stopped because the client went away
        self.error: str | None = None        # the first failure's message, and its status (400: the request's own)
        self.error_status = 500
        self.loop = asyncio.get_running_loop()
        self.work: list[Work] = []
        self.prompt_tokens = 0
        try:            # prompts and settings are checked (and tokenized) before the response starts
            for prompt in req.prompts:
                self.prompt_tokens += len(engine.prompt_ids(prompt))
                for i in range(req.n):
                    seed = None if req.seed is None else (req.seed + i) % 2**64
                    config = GenerationConfig(seed=seed, logprobs=req.logprobs, **req.sampling)
                    self.work.append(Work(self, len(self.work), prompt, config))
        except USER_ERRORS as e:
            raise ApiError(str(e)) from None
        self.sequences = [None] * len(self.work)
        self.remaining = len(self.work)      # counted down by the worker's thread only

    def put(self, *event) -> None:
        """An event for the request's handler, from the worker's thread. When the server's loop has closed
        (the server stopped while this request's sequences ran), nobody is listening: the job is cancelled,
        and the worker drops its sequences at its next pass."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:            # the loop is closed
            self.cancelled.set()

    def fail(self, message: str, status: int) -> None:
        """One of the job's sequences failed (called from the worker's thread)."""
        if self.error is None:
            self.error, self.error_status = message, status
        self.put("error", message, status)

    def choice_done(self, choice: int, seq) -> None:
        """The worker's word that a choice ended (seq None: it never ran)."""
        self.sequences[choice] = seq
        self.put("done", choice, seq)
        self.remaining -= 1
        if self.remaining == 0:
            self.put("end")

    async def events(self, request: web.Request):
        """The job's events; stops it when the client's connection closes (checked while waiting too)."""
        for work in self.work:
            self.worker.submit(work)
        try:
            while True:
                if client_gone(request):
                    self.cancelled_early = True
                    return
                try:
                    event = await asyncio.wait_for(self.queue.get(), 0.25)
                except asyncio.TimeoutError:
                    continue
                if event[0] == "end":
                    return
                yield event
        finally:
            self.cancelled.set()         # sequences still running leave the batch at its next pass

    def usage(self) -> dict:
        completion = sum(s.completion_tokens for s in self.sequences if s is not None)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def _chat_logprob(tok, token) -> dict:
    def entry(token_id, logprob):
        text = tok.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
    return {**entry(token.id, token.logprob), "top_logprobs": [entry(i, lp) for i, lp in token.top_logprobs]}


class Choices:
    """The choices of a response as tokens arrive: text, finish reason and log-probabilities, in the
    shape of a chat completion or a text completion."""

    def __init__(self, job: Job):
        self.job, self.kind = job, job.req.kind
        self.text = [""] * len(job.work)
        self.tokens = [[] for _ in job.work]
        self.finish = [None] * len(job.work)

    def add(self, choice: int, token) -> None:
        self.text[choice] += token.text
        self.tokens[choice].append(token)

    def logprobs(self, tokens) -> dict | None:
        if self.job.req.logprobs is None:
            return None
        tok = self.job.engine.tokenizer
        if self.kind == "chat":
            return {"content": [_chat_logprob(tok, t) for t in tokens]}
        texts = [tok.token_text(t.id) for t in tokens]
        return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{tok.token_text(i): lp for i, lp in t.top_logprobs} for t in tokens],
                "text_offset": [sum(len(x) for x in texts[:k]) for k in range(len(texts))]}

    def whole(self, choice: int) -> dict:
        out = {"index": choice, "finish_reason": self.finish[choice], "logprobs": self.logprobs(self.tokens[choice])}
        if self.kind == "chat":
            return {**out, "message": {"role": "assistant", "content": self.text[choice]}}
        return {**out, "text": self.text[choice]}

    def delta(self, choice: int, token=None, finish=None, first=False) -> dict:
        tokens = [token] if token is not None else []
        out = {"index": choice, "finish_reason": finish, "logprobs": self.logprobs(tokens) if tokens else None}
        if self.kind == "chat":
            delta = {"role": "assistant", "content": ""} if first else {"content": token.text} if token else {}
            return {**out, "delta": delta}
        return {**out, "text": token.text if token else ""}


def add_endpoints(app: web.Application, registry: Registry, routes: Routes | None = None, admin: bool = False) -> None:
    """routes: A/B routes over the registry's models; admin: also PUT /admin/models/{name} {"path": PACKAGE},
    a hot swap (behind the admin keys)."""
    routes = routes or Routes()
    for r in routes.routes.values():
        missing = [a.model for a in r.arms if a.model not in registry.versions]
        if missing or r.name in registry.versions:
            raise ValueError(f"route {r.name}: arms must be served models ({', '.join(missing)} is not), and its "
                             "name no model's")
    # per model: requests, completed, cancelled (the client went away), failed, rejected (429/503),
    # completion_tokens; GET /stats
    counters = {name: dict.fromkeys(("requests", "completed", "cancelled", "failed", "rejected",
                                     "completion_tokens"), 0) for name in registry.versions}

    def model_entry(name: str) -> dict:
        version = registry.get(name)[1]
        return {"id": name, "object": "model", "created": int(version.path.stat().st_mtime), "owned_by": "webmoe",
                "digest": version.digest, "routing": describe_routing(version.routing)}

    async def list_models(request):
        routed = [{"id": name, "object": "model", "created": 0, "owned_by": "webmoe-route"} for name in routes.routes]
        return web.json_response({"object": "list", "data": [model_entry(name) for name in registry.versions] + routed})

    async def get_model(request):
        return web.json_response(model_entry(request.match_info["model"]))

    async def health(request):
        return web.json_response({"status": "ok"})

    async def ready(request):
        return web.json_response({"status": "ready", "models": {
            name: "loaded" if v.engine is not None else "loads on first request"
            for name, v in registry.versions.items()}})

    async def stats(request):
        def batching(version):
            w = version.worker
            return {"passes": w.passes, "batched_tokens": w.tokens} if w else {"passes": 0, "batched_tokens": 0}
        return web.json_response({name: {**counters[name], "running": registry.admission[name].running,
                                         "waiting": registry.admission[name].waiting, **batching(v)}
                                  for name, v in registry.versions.items()})

    async def swap(request):
        body = parse_json(await request.read(), "the request body", ApiError, 1 << 16)
        if not isinstance(body, dict) or not isinstance(body.get("path"), str) or set(body) != {"path"}:
            raise ApiError('expected {"path": "PACKAGE DIRECTORY"}')
        version = await registry.swap(request.match_info["model"], body["path"])
        return web.json_response({"model": request.match_info["model"], "path": str(version.path),
                                  "digest": version.digest, "swaps": registry.swaps})

    async def generate(request, parse):
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            raise ApiError(f"the request body is larger than {MAX_REQUEST_BYTES} bytes", 413)
        req = parse(await request.read())
        route, arm, model = routes.pick(req.model, req.user)     # a route name: one of its arms' models
        name = registry.get(model)[0]
        counts = counters[name]
        counts["requests"] += 1
        meta = {"id": f"{'chatcmpl' if req.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "created": int(time.time()), "model": name}
        t0 = time.monotonic()
        outcome, job = "failed", None         # every request ends in exactly one of the counters
        try:
            response, job = await run(request, req, name, meta)
            cancelled = response.status == 499 or job.cancelled_early
            outcome = "cancelled" if cancelled else "failed" if job.error else "completed"
            return response
        except ClientGone:                    # it left while waiting for a slot: nobody to answer
            outcome = "cancelled"
            return web.Response(status=499)
        except ApiError as e:
            outcome = "rejected" if e.status in (429, 503) else "failed"
            if route is not None and e.status >= 500 and e.status != 503:
                route.record(arm, False, time.monotonic() - t0, 0)
            raise
        except asyncio.CancelledError:        # the server is stopping
            outcome = "cancelled"
            raise
        finally:
            counts[outcome] += 1
            if job is not None:
                counts["completion_tokens"] += job.usage()["completion_tokens"]
                if route is not None and outcome in ("completed", "failed"):   # the arm's fault, or not (400)
                    route.record(arm, outcome == "completed" or job.error_status < 500, time.monotonic() - t0,
                                 job.usage()["completion_tokens"])
                    routes.remember(meta["id"], route, arm)

    async def feedback(request):
        body = parse_json(await request.read(), "the request body", ApiError, 1 << 16)
        if not (isinstance(body, dict) and set(body) == {"id", "positive"} and isinstance(body["id"], str)
                and isinstance(body["positive"], bool)):
            raise ApiError('expected {"id": COMPLETION ID, "positive": true | false}')
        voter = hashlib.sha256(request.headers.get("Authorization", "").encode()).hexdigest()[:32]
        replaced = routes.feedback(body["id"], body["positive"], voter)
        return web.json_response({"recorded": True, "replaced": replaced})

    async def route_stats(request):
        return web.json_response(routes.report())

    async def run(request, req: GenerationRequest, name: str, meta: dict):
        async with registry.admission[name].slot(name, lambda: client_gone(request)), \
                registry.use(name) as (_, version, engine):
            if client_gone(request):
                raise ClientGone()
            job = Job(engine, version.worker, req)
            if req.stream:
                return await _stream(request, job, meta), job
            choices = Choices(job)
            events = job.events(request)
            try:
                async for event in events:
                    if event[0] == "token":
                        choices.add(event[1], event[2])
                    elif event[0] == "done" and event[2] is not None:
                        choices.finish[event[1]] = event[2].finish_reason
                    elif event[0] == "error":
                        raise ApiError(f"generation failed: {event[1]}", event[2])
            finally:
                await events.aclose()
            if job.cancelled_early:     # the client went away: nobody to answer
                return web.Response(status=499), job
            return web.json_response({
                **meta, "object": "chat.completion" if req.kind == "chat" else "text_completion",
                "choices": [choices.whole(c) for c in range(len(job.work))], "usage": job.usage()}), job

    async def chat(request):
        return await generate(request, parse_chat)

    async def completions(request):
        return await generate(request, parse_completion)

    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/stats", stats)
    app.router.add_get("/routes", route_stats)
    app.router.add_post("/v1/feedback", feedback)
    if admin:
        app.router.add_put("/admin/models/{model}", swap)


async def _stream(request, job: Job, meta: dict) -> web.StreamResponse:
    """Server-sent events: a chunk per token (per choice), each choice's finish, with include_usage a last
    chunk of usage, then [DONE]; an error after the stream began is its last event."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    choices = Choices(job)
    obj = "chat.completion.chunk" if job.req.kind == "chat" else "text_completion"
    usage = {"usage": None} if job.req.include_usage else {}

    async def send(payload: dict) -> None:
        await resp.write(("data: " + json.dumps(payload) + "\n\n").encode())

    async def chunk(choice: dict) -> None:
        await send({**meta, "object": obj, "choices": [choice], **usage})
    events = job.events(request)
    try:
        await resp.prepare(request)
        if job.req.kind == "chat":
            for c in range(len(job.work)):
                await chunk(choices.delta(c, first=True))
        async for event in events:
            if event[0] == "token":
                if event[2].text or job.req.logprobs is not None:     # (text may be held back for a while)
                    await chunk(choices.delta(event[1], event[2]))
            elif event[0] == "done" and event[2] is not None:
                await chunk(choices.delta(event[1], finish=event[2].finish_reason))
            elif event[0] == "error":
                await send({"error": {"message": f"generation failed: {event[1]}",
                                      "type": TYPES.get(event[2], "api_error"), "param": None, "code": None}})
        if job.req.include_usage:
            await send({**meta, "object": obj, "choices": [], "usage": job.usage()})
        await resp.write(b"data: [DONE]\n\n")
    except ConnectionResetError:
        job.cancelled_early = True       # the client went away (before the stream began, too)
    finally:
        await events.aclose()            # stops the generation if it still runs
    return resp if resp.prepared else web.Response(status=499)
