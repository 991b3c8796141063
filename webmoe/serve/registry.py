"""The models a server answers for: each name points at one version (a package directory and its
manifest digest) whose engine loads on first use. Reading the registry is one dict lookup, never blocked:
a swap validates and loads the new version off the event loop, then replaces the entry in one assignment;
requests that already hold the old version finish on it, and its engine is dropped when the last one ends.
With a memory budget, idle engines are unloaded, least recently used first, to make room for another."""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from webmoe.engine.engine import Engine
from webmoe.engine.errors import USER_ERRORS, OptionError
from webmoe.engine.host_pins import hot_experts
from webmoe.engine.package import Package
from webmoe.engine.routing import parse_routing

from .admission import Admission
from .api_errors import ApiError
from .batching import BatchWorker
from .options import ServeOptions


@dataclass(eq=False)
class Version:
    path: Path
    digest: str
    bytes: int                                   # the package's shards: what its engine holds, roughly
    manifest: dict = field(default_factory=dict, repr=False)
    routing: str = "model"                       # engine/routing.py's strategy its engine runs
    engine: Engine | None = None
    worker: BatchWorker | None = None            # its engine's batch, in a thread
    users: int = 0                               # requests holding this version now
    last_used: float = 0.0
    loading: asyncio.Lock = field(default_factory=asyncio.Lock)


def read_version(path: Path) -> Version:
    """A package checked as every loader checks it (schema, digest), not yet loaded."""
    m = Package(path).manifest
    return Version(Path(path), m["manifest_sha256"], sum(s["size"] for s in m["shards"]), m)


class Registry:
    def __init__(self, dirs: dict[str, Path], options: ServeOptions = ServeOptions()):
        """options.engine.max_batch: sequences each engine decodes together; as many requests run at once per
        name (more wait in its Admission queue), whichever version serves them. options.pin_hot_share: hold
        in host memory each layer's most-used experts covering this share of its tokens (the package's
        routing statistics). options.routing: name -> a routing rule other than the trained one, for
        experiments. options.package_roots: the folders a swap may take packages from (default: the served
        packages' parents)."""
        roots = options.package_roots if options.package_roots is not None else [Path(p).parent for p in dirs.values()]
        self.package_roots = sorted({Path(r).resolve() for r in roots})
        self.engine_options, self.memory_budget = options.engine, options.memory_budget
        self.pin_hot_share = options.pin_hot_share
        self.versions = {name: read_version(path) for name, path in dirs.items()}
        self.routing = dict(options.routing)
        unknown = set(self.routing) - set(dirs)
        if unknown:
            raise OptionError(f"routing for {', '.join(sorted(unknown))}: not a served model")
        for name, spec in self.routing.items():
            parse_routing(spec)
            self.versions[name].routing = spec
        self.admission = {name: Admission(**{"running": options.engine.max_batch, **options.admission})
                          for name in dirs}
        self.retired: list[Version] = []           # swapped out, still in use
        self.swaps = 0

    def get(self, name: str | None) -> tuple[str, Version]:
        name = name or next(iter(self.versions), None)
        version = self.versions.get(name)
        if version is None:
            raise ApiError(f"unknown model {name!r}; served: {', '.join(self.versions)}", 404, param="model",
                           code="model_not_found")
        return name, version

    @asynccontextmanager
    async def use(self, name: str | None):
        """(name, version, engine) for one request; the version stays alive until the request ends."""
        name, version = self.get(name)
        version.users += 1
        try:
            yield name, version, await self.engine(version)
        finally:
            version.users -= 1
            version.last_used = time.monotonic()
            if version in self.retired and version.users == 0:
                self.retired.remove(version)
                self.unload(version)                  # its GPU memory goes with the last reference

    async def engine(self, version: Version, status: int = 500) -> Engine:
        """The version's engine, loaded now if need be; a package that cannot load is an ApiError of `status`
        (500 for a served model: the server's fault; 400 for a swap: the admin's)."""
        async with version.loading:
            if version.engine is None:
                await self.make_room(version)
                try:
                    version.engine = await asyncio.to_thread(Engine.load, version.path, self.engine_options.but(
                        host_pinned_experts=hot_experts(version.manifest, self.pin_hot_share), routing=version.routing))
                except USER_ERRORS as e:
                    raise ApiError(f"{version.path.name} cannot be loaded: {e}", status) from None
                version.worker = BatchWorker(version.engine)
                print(f"webmoe: loaded {version.engine.describe()}", flush=True)    # the server's console
                pins = version.engine.experts.host_pins
                if pins:
                    print(f"webmoe: {len(pins.offsets)} hot experts in host memory: {pins.message}", flush=True)
        return version.engine

    async def make_room(self, incoming: Version) -> None:
        """Unloads idle engines, least recently used first, until `incoming` fits the memory budget."""
        if self.memory_budget is None:
            return
        loaded = [v for v in [*self.versions.values(), *self.retired] if v.engine is not None]
        used = sum(v.bytes for v in loaded)
        for v in sorted((v for v in loaded if v.users == 0), key=lambda v: v.last_used):
            if used + incoming.bytes <= self.memory_budget:
                break
            self.unload(v)
            used -= v.bytes
            print(f"webmoe: unloaded {v.path.name} (memory budget)", flush=True)

    async def close(self, app=None) -> None:
        """Unloads every engine: the server is stopping (aiohttp's on_cleanup, after the last request)."""
        for version in [*self.versions.values(), *self.retired]:
            self.unload(version)

    @staticmethod
    def unload(version: Version) -> None:
        if version.worker is not None:
            version.worker.stop()
        version.engine = version.worker = None

    def package_dir(self, path: str) -> Path:
        """`path` as a package folder inside one of the package roots, resolved (symbolic links followed);
        a 400 that says nothing of what lies outside the roots otherwise."""
        outside = ApiError("the path must name a package folder inside a package root (webmoe serve "
                           "--package-root)", 400, param="path")
        if not path or "\0" in path or len(path) > 4096:
            raise outside
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError, ValueError):
            raise outside from None
        if not any(resolved != root and resolved.is_relative_to(root) for root in self.package_roots):
            raise outside
        return resolved

    async def swap(self, name: str, path: str) -> Version:
        """Points `name` at the package in `path` (inside a package root), loaded before it takes traffic."""
        if name not in self.versions:
            raise ApiError(f"unknown model {name!r}", 404, param="model")
        folder = self.package_dir(path)
        try:
            new = await asyncio.to_thread(read_version, folder)
        except USER_ERRORS as e:
            raise ApiError(f"not a package webmoe can serve: {e}", 400, param="path") from None
        except OSError as e:
            raise ApiError(f"the package cannot be read: {e.strerror}", 400, param="path") from None
        new.routing = self.routing.get(name, "model")
        await self.engine(new, status=400)
        old, self.versions[name] = self.versions[name], new
        self.swaps += 1
        if old.users:
            self.retired.append(old)
        else:
            self.unload(old)
        print(f"webmoe: {name} now serves {path} ({new.digest[:12]}), was {old.digest[:12]}", flush=True)
        return new

    def describe(self) -> dict:
        return {name: {"path": str(v.path), "digest": v.digest, "loaded": v.engine is not None, "users": v.users}
                for name, v in self.versions.items()}
