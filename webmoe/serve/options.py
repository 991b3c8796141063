"""What `webmoe serve` is asked for, as one named object: the CLI builds it from its flags, tests build it
directly, and create_app, the registry and the access layer read what they need from it."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from webmoe.engine.options import EngineOptions


@dataclass(frozen=True)
class ServeOptions:
    engine: EngineOptions = EngineOptions(max_batch=8)  # each model's engine; max_batch: sequences decoded together
    api: bool = True                    # the OpenAI-compatible /v1 API (else only the web app and packages)
    api_keys: tuple[str, ...] = ()      # keys the /v1 API asks for (none: open)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API
    admin_keys: tuple[str, ...] = ()    # enable the registry's hot swap (PUT /admin/models/NAME) for these keys
    admission: dict = field(default_factory=dict)   # the queue's settings per model: max_waiting, max_wait_s
    memory_budget: int | None = None    # bytes of packages whose engines may stay loaded at once
    routes: tuple = ()                  # A/B routes (routes.Route) over the served models
    pin_hot_share: float = 0.0          # each layer's most-used experts covering this share held in host memory
    routing: dict[str, str] = field(default_factory=dict)  # model name -> another routing rule (engine/routing.py)
    package_roots: tuple[Path, ...] | None = None   # folders a hot swap may serve from (default: the packages')
    loopback_only: bool = False         # listening on a loopback address: refuse other Host names

    def but(self, **changes) -> "ServeOptions":
        """These options with some fields changed; engine option names change the engine's."""
        own = {f.name for f in fields(self)}
        engine = {k: changes.pop(k) for k in list(changes) if k not in own}
        options = replace(self, **changes)
        return replace(options, engine=options.engine.but(**engine)) if engine else options
