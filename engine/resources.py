"""What a package's plan needs of an adapter (plan["resources"], written by the converter), checked once
at load before anything is allocated. web/resources.js is the browser's twin."""
from __future__ import annotations

from .errors import ExpertCacheError, PackageError, PlanError


def buffer_bytes(resource: dict, dims: dict[str, int]) -> int:
    """A plan buffer's bytes: resource is {"T": bytes per chunk token} | {"S": per position} | {"fixed": n}."""
    return sum(v if k == "fixed" else v * dims[k] for k, v in resource.items())


def check_resources(plan: dict, max_binding: int, T: int, S: int) -> None:
    r = plan["resources"]
    big = r["largest_tensor"]
    if big["bytes"] > max_binding:
        raise PackageError(f"tensor {big['name']} ({big['bytes'] / 2**20:.0f} MiB) exceeds this adapter's storage "
                           f"binding limit of {max_binding / 2**20:.0f} MiB")
    slot = r["experts"]["slot_bytes"]
    if slot > max_binding:
        raise ExpertCacheError(f"one expert ({slot / 2**20:.0f} MiB) exceeds this adapter's storage binding limit "
                               f"of {max_binding / 2**20:.0f} MiB")
    for name, res in r["buffers"].items():
        size = buffer_bytes(res, {"T": T, "S": S})
        if size > max_binding:
            raise PlanError(f"buffer {name} needs {size} bytes, above this adapter's storage binding limit of "
                            f"{max_binding}; lower max_seq_len or the chunk size")
