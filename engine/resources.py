"""What a package's plan needs of an adapter (plan["resources"], written by the converter), checked once
at load before anything is allocated. web/resources.js is the browser's twin."""
from __future__ import annotations

from .errors import ExpertCacheError, PackageError, PlanError


def buffer_bytes(resource: dict, dims: dict[str, int]) -> int:
    """A plan buffer's bytes: resource is {"T": bytes per chunk token} | {"S": per position} | {"fixed": n}."""
    return sum(v if k == "fixed" else v * dims[k] for k, v in resource.items())


def plan_bytes(plan: dict, T: int, S: int) -> dict[str, int]:
    """Bytes the plan's buffers take for a chunk of T tokens and S positions: all of them, and the KV
    cache (the buffers sized by position)."""
    bufs = plan["resources"]["buffers"].values()
    return {"buffers": sum(buffer_bytes(b, {"T": T, "S": S}) for b in bufs),
            "kv_cache": sum(b.get("S", 0) * S for b in bufs), "kv_per_token": sum(b.get("S", 0) for b in bufs)}


def check_resources(plan: dict, max_binding: int, T: int, S: int) -> None:
    r = plan["resources"]
    big = r["largest_tensor"]
    hint = (f"; the package was cut for {r['max_binding'] / 2**20:g} MiB bindings: convert it with "
            f"--max-binding {max_binding}")
    if big["bytes"] > max_binding:
        raise PackageError(f"tensor {big['name']} ({big['bytes'] / 2**20:.1f} MiB) exceeds this adapter's storage "
                           f"binding limit of {max_binding / 2**20:.1f} MiB{hint}")
    slot = r["experts"]["slot_bytes"]
    if slot > max_binding:
        raise ExpertCacheError(f"one expert slot ({slot / 2**20:.1f} MiB) exceeds this adapter's storage binding "
                               f"limit of {max_binding / 2**20:.1f} MiB{hint}")
    for name, res in r["buffers"].items():
        size = buffer_bytes(res, {"T": T, "S": S})
        if size > max_binding:
            raise PlanError(f"buffer {name} needs {size} bytes, above this adapter's storage binding limit of "
                            f"{max_binding}; lower max_seq_len or the chunk size")
