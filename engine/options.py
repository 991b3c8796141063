"""How an engine is loaded and run, as one named object (web/options.js is the twin): the CLI, the server
and the tools build an EngineOptions and pass it whole; a new option is a field here, its use, and its flag."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from webmoe.format.plan_variants import ADAPTER_CLASSES

from .errors import OptionError


@dataclass(frozen=True)
class EngineOptions:
    adapter: str | None = None          # a WebGPU adapter by name (else WEBMOE_ADAPTER, else the best found)
    max_seq_len: int | None = None      # KV cache rows per sequence (default: the model's, at most 4096)
    chunk_tokens: int = 64              # tokens one forward pass runs at most (the prefill chunk)
    expert_cache_bytes: int | None = None   # GPU budget for routed experts (default: engine/memory.py's)
    pinned_experts: tuple[tuple[int, int], ...] = ()        # (layer, expert) pairs never evicted
    observe_routing: bool = False       # record every token's experts (engine.experts.usage, .coactivation)
    prefetch: bool = False              # when paging, load each next MoE layer's predicted experts early
    max_binding: int | None = None      # a lower storage binding limit to keep to (tests)
    digest: str | None = None           # the sha256 the package's manifest must have (`webmoe info` prints it)
    max_batch: int = 1                  # sequences that decode together, each with max_seq_len KV cache rows
    host_pinned_experts: tuple[tuple[int, int], ...] = ()   # (layer, expert) pairs held in host memory
    routing: str = "model"              # another routing rule than the trained one (engine/routing.py)
    adapter_class: str | None = None    # the plan variant to run, "gpu" or "cpu" (default: the adapter's own)

    def __post_init__(self):
        def whole(name, low, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
                raise OptionError(f"{name} must be an integer of at least {low}, not {v!r}")
        whole("max_seq_len", 1, allow_none=True)
        whole("chunk_tokens", 1)
        whole("expert_cache_bytes", 0, allow_none=True)
        whole("max_binding", 1, allow_none=True)
        whole("max_batch", 1)
        if self.adapter_class not in (None, *ADAPTER_CLASSES):
            raise OptionError(f"adapter_class must be one of {', '.join(ADAPTER_CLASSES)}, not {self.adapter_class!r}")
        for name in ("pinned_experts", "host_pinned_experts"):
            pairs = tuple(tuple(p) for p in getattr(self, name))
            if not all(len(p) == 2 and all(isinstance(i, int) and i >= 0 for i in p) for p in pairs):
                raise OptionError(f"{name} must be (layer, expert) pairs of non-negative integers")
            object.__setattr__(self, name, pairs)

    def but(self, **changes) -> "EngineOptions":
        """These options with some fields changed (each checked again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"no engine option {', '.join(sorted(unknown))}")
        return replace(self, **changes)
