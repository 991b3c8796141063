"""`webmoe serve`: the chat app, the shared kernels and RDRR packages over HTTP (aiohttp).

    /                        the chat page (web/index.html)
    /web/FILE                the chat page's files; /web/dist/standalone/webmoe.js is the browser runtime as
                             the npm package builds it (web/build.mjs: kernels, schemas, npm modules inline);
                             in a source checkout also its unbuilt ES modules
    /shaders/NAME.wgsl       the kernels, the same files the native engine reads
    /schemas/NAME.schema.json  the JSON Schemas both runtimes check input against
    /models                  JSON list of the served packages
    /models/NAME/FILE        package files: only those the manifest names, with Range and sha256 ETags
    /v1/...                  OpenAI-compatible API on the native engine (openai_api.py), /health, /ready
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from webmoe.engine.package import Package
from webmoe.schemas import SCHEMA_DIR
from webmoe.shaders import SHADER_DIR
from webmoe.web import WEB_DIR

from .http_files import confined, file_sha256, hashed_file, static_file
from .api_access import install_access, is_loopback
from .api_errors import openai_errors
from .api_requests import MAX_REQUEST_BYTES
from .openai_api import add_endpoints
from .options import ServeOptions
from .registry import Registry
from .routes import Routes

PACKAGES = web.AppKey("packages", dict)
REGISTRY = web.AppKey("registry", Registry)          # the API's models (absent with api=False)


class ServedPackage:
    """A package directory and the hash of every file the server may send from it."""

    def __init__(self, path: Path):
        self.package = Package(path)          # validates the manifest before anything is served
        self.dir = self.package.dir.resolve()
        self.name = self.dir.name
        m = self.package.manifest
        self.files = {s["file"]: s["sha256"] for s in m["shards"]}
        for extra in ("manifest.json", m["tokenizer"].get("file", "tokenizer.json"), "tokenizer_config.json"):
            if (self.dir / extra).is_file():
                self.files[extra] = file_sha256(self.dir / extra)
        self.size = sum(s["size"] for s in m["shards"])
        self.dense_size = sum(s["size"] for s in m["shards"] if s["kind"] != "expert")

    def describe(self) -> dict:
        m = self.package.manifest
        return {"name": self.name, "family": m["family"], "manifest": f"/models/{self.name}/manifest.json",
                "bytes": self.size, "dense_bytes": self.dense_size, "dtype": m["dtype"]}


def create_app(package_dirs: list[Path], options: ServeOptions | None = None, web_dir: Path = WEB_DIR,
               **changes) -> web.Application:
    """The server's application: the web app, the packages and (options.api) the OpenAI-compatible API.
    options: webmoe/serve/options.py's ServeOptions, and any of its fields (or its engine's) by name."""
    options = (options or ServeOptions()).but(**changes)
    packages: dict[str, ServedPackage] = {}
    for d in package_dirs:
        sp = ServedPackage(Path(d))
        if sp.name in packages:
            raise ValueError(f"two packages are named {sp.name!r}")
        packages[sp.name] = sp
    web_root, modules = web_dir.resolve(), (web_dir / "node_modules").resolve()

    async def index(request):
        return static_file(web_root / "index.html")

    async def web_file(request):
        path = confined(web_root, request.match_info["path"])
        if path is None or path.is_relative_to(modules) or path.suffix == ".py":
            raise web.HTTPNotFound()
        if path.is_relative_to(web_root / "dist") and not (web_root / "dist").is_dir():
            raise web.HTTPNotFound(text="the browser runtime is not built: run ./setup.sh (npm run build in web/)")
        return static_file(path)

    async def shader(request):
        path = confined(SHADER_DIR, request.match_info["name"])
        if path is None or path.suffix != ".wgsl":
            raise web.HTTPNotFound()
        return static_file(path)

    async def schema(request):
        path = confined(SCHEMA_DIR, request.match_info["name"])
        if path is None or not path.name.endswith(".schema.json") or not path.is_file():
            raise web.HTTPNotFound()
        return static_file(path)

    async def models(request):
        return web.json_response([p.describe() for p in packages.values()])

    async def model_file(request):
        sp = packages.get(request.match_info["model"])
        name = request.match_info["file"]
        if sp is None or name not in sp.files:
            raise web.HTTPNotFound(headers=PACKAGE_CORS)
        path = confined(sp.dir, name)
        if path is None:
            raise web.HTTPNotFound(headers=PACKAGE_CORS)
        return await hashed_file(request, path, sp.files[name], PACKAGE_CORS)

    async def model_file_preflight(request):
        return web.Response(status=204, headers={**PACKAGE_CORS, "Access-Control-Allow-Methods": "GET",
                                                 "Access-Control-Allow-Headers": "Range, If-Range",
                                                 "Access-Control-Max-Age": "86400"})

    app = web.Application(middlewares=[openai_errors], client_max_size=MAX_REQUEST_BYTES)   # aiohttp's default: 1 MiB
    app[PACKAGES] = packages
    app.router.add_get("/", index)
    app.router.add_get("/web/{path:.+}", web_file)
    app.router.add_get("/shaders/{name}", shader)
    app.router.add_get("/schemas/{name}", schema)
    app.router.add_get("/models", models)
    app.router.add_get("/models/{model}/{file}", model_file)
    app.router.add_route("OPTIONS", "/models/{model}/{file}", model_file_preflight)
    if options.api:
        install_access(app, options.api_keys, options.cors_origins, options.admin_keys, options.loopback_only)
        registry = Registry({name: sp.dir for name, sp in packages.items()}, options)
        add_endpoints(app, registry, Routes(list(options.routes)), admin=bool(options.admin_keys))
        app[REGISTRY] = registry
        app.on_cleanup.append(registry.close)
    return app


# Package files are public and every shard is checked against its sha256 by whoever reads it, so any page
# may fetch them: a `webmoe serve` can be another origin's mirror (the manifest's `mirrors`).
PACKAGE_CORS = {"Access-Control-Allow-Origin": "*",
                "Access-Control-Expose-Headers": "Content-Range, Content-Length, ETag, Accept-Ranges"}


def serve(package_dirs: list[Path], options: ServeOptions, host: str = "127.0.0.1", port: int = 8080) -> None:
    app = create_app(package_dirs, options.but(loopback_only=is_loopback(host)))
    print(f"webmoe: serving {', '.join(app[PACKAGES])} — open http://{host}:{port}/", flush=True)
    web.run_app(app, host=host, port=port, print=None)
