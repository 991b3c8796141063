"""Who may call the API: optional API keys for /v1, /stats and /routes (`Authorization: Bearer KEY`), admin
keys for /admin, and CORS for the origins the server is started with (`webmoe serve --api-key`,
`--admin-key`, `--cors-origin`). Files, the chat page, /health and /ready are not behind the keys: they
are public, as the page that the browser runtime runs in must be.

A web page of another origin must not drive a local server through its users' browsers (a keyless server
on 127.0.0.1 is anyone's otherwise): a request that carries an Origin other than the server's own and
the allowed ones is refused, and a request with a body must say `Content-Type: application/json`, which
browsers never send across origins without a preflight, which is refused in turn."""
from __future__ import annotations

import hmac

from aiohttp import web

from .api_errors import ApiError, is_api

PREFLIGHT = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
             "Access-Control-Allow-Headers": "Authorization, Content-Type",
             "Access-Control-Max-Age": "86400"}


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.") or host.endswith(".localhost")


def install_access(app: web.Application, api_keys: tuple[str, ...] = (), cors_origins: tuple[str, ...] = (),
                   admin_keys: tuple[str, ...] = (), loopback_only: bool = False) -> None:
    """cors_origins: origins allowed to call the API from a page ("*" for any); none: same origin only.
    admin_keys: the keys /admin asks for (the API keys do not open it). loopback_only: the server listens on
    a loopback address, so the API answers only requests that name it by a loopback name (Host): a page
    whose own name was rebound to 127.0.0.1 (DNS rebinding) looks same-origin and would pass otherwise."""
    keys = [k.encode() for k in api_keys]
    admin = [k.encode() for k in admin_keys]

    def has_key(request, allowed) -> bool:
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip().encode() if auth.startswith("Bearer ") else b""
        return any(hmac.compare_digest(given, k) for k in allowed)

    def cors_headers(request) -> dict:
        origin = request.headers.get("Origin")
        if origin is None or not cors_origins:
            return {}
        if "*" in cors_origins:
            return {"Access-Control-Allow-Origin": "*"}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin in cors_origins else {}

    @web.middleware
    async def access(request: web.Request, handler):
        if not is_api(request):
            return await handler(request)
        origin = request.headers.get("Origin")
        if loopback_only and not is_loopback(request.url.host or ""):
            raise ApiError(f"this server listens on a loopback address and answers its API only as localhost, not "
                           f"as {request.host[:100]!r}", 403)
        if request.method == "OPTIONS":           # a preflight carries no credentials
            if not cors_headers(request):
                raise ApiError(f"origin {origin!r} may not call this API", 403)
            return web.Response(status=204, headers=PREFLIGHT)
        if origin is not None and origin != own_origin(request) and not cors_headers(request):
            raise ApiError(f"origin {origin[:200]!r} may not call this API (the server allows the origins given "
                           "with --cors-origin)", 403)
        if request.method in ("POST", "PUT") and request.content_type != "application/json":
            raise ApiError(f"the request body must be JSON, sent with Content-Type: application/json "
                           f"(not {request.content_type[:100]!r})", 415)
        if request.path.startswith("/admin/"):
            if not has_key(request, admin):
                raise ApiError("an admin key is needed: send `Authorization: Bearer KEY`", 401, code="invalid_api_key")
        elif keys and not has_key(request, keys):
            raise ApiError("a valid API key is needed: send `Authorization: Bearer KEY`", 401, code="invalid_api_key")
        return await handler(request)

    def own_origin(request) -> str:
        return f"{request.scheme}://{request.host}"

    async def add_cors(request, response):     # every /v1 response, streamed ones and errors included
        if is_api(request):
            response.headers.update(cors_headers(request))

    app.middlewares.append(access)
    app.on_response_prepare.append(add_cors)
