"""Errors of the /v1 API in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, for every
failure — bad requests, unknown routes and methods, authentication, overload and the server's own faults
(whose details go to the server's console, not to the client)."""
from __future__ import annotations

import json
import sys
import traceback

from aiohttp import web

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
         429: "rate_limit_error", 503: "server_overloaded"}


class ApiError(web.HTTPException):
    """An HTTP error whose body is OpenAI's error object. param: the request field at fault."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        self.status_code = status
        super().__init__(headers=headers, content_type="application/json",
                         text=json.dumps({"error": {"message": message, "type": TYPES.get(status, "api_error"),
                                                    "param": param, "code": code}}))


STATISTICS = ("/stats", "/routes")        # what the server has served: behind the API keys as /v1 is


def is_api(request: web.Request) -> bool:
    """The API's paths: /v1 (OpenAI's), /admin (the registry's) and the statistics."""
    return request.path.startswith(("/v1/", "/admin/")) or request.path in ("/v1", *STATISTICS)


@web.middleware
async def openai_errors(request: web.Request, handler):
    """On /v1 paths: aiohttp's own errors (404, 405, 413) and unexpected exceptions become ApiErrors."""
    if not is_api(request):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = {404: f"no route {request.method} {request.path}",
                   405: f"{request.method} is not allowed on {request.path}"}.get(e.status, e.reason)
        raise ApiError(message, e.status, headers={k: v for k, v in e.headers.items() if k == "Allow"}) from None
    except Exception:   # the server's fault: the client gets a 500 without internals, the console the traceback
        traceback.print_exc(file=sys.stderr)
        raise ApiError("the server failed to process the request", 500) from None
