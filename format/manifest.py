"""manifest.json: sealed with its own sha256 when written, read back strictly (twin: web/manifest.js).

The manifest states `manifest_sha256`: the sha256 of its own bytes with that value written as 64 zeros.
Every other byte of a package is covered by a shard's sha256, which the manifest states, so checking the
manifest's digest at load detects a change to any byte of the package. The check is byte-exact: a
manifest re-serialised by another tool (other spacing, key order) must be converted again.

Reading: the version first (so an old package gets its own message), then the digest, then the schema
(schemas/manifest.schema.json, with the jsonschema library), then what a schema cannot say: the
cross-references between shards, tensors, experts and the plan."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .errors import PackageError
from .expr import variables
from .plan_variants import plan_for
from .strict_json import check_schema, parse_json, schema

# The one format this webmoe writes and reads, stated once: the schema's format and format_version (its
# description gives the history); the browser reads the same schema.
FORMAT_NAME = schema("manifest")["properties"]["format"]["const"]
FORMAT_VERSION = schema("manifest")["properties"]["format_version"]["const"]
MAX_MANIFEST_BYTES = 256 << 20
_ZERO = "0" * 64
_SEAL = re.compile(rb'"manifest_sha256": "([0-9a-f]{64})"')


def seal_manifest(manifest: dict) -> bytes:
    """The manifest's bytes, stating their own sha256."""
    body = json.dumps({**manifest, "manifest_sha256": _ZERO}, indent=1, allow_nan=False).encode("utf-8")
    if len(_SEAL.findall(body)) != 1:
        raise ValueError("a manifest may name manifest_sha256 only once")
    digest = hashlib.sha256(body).hexdigest()
    return _SEAL.sub(f'"manifest_sha256": "{digest}"'.encode(), body)


def stamped(manifest: dict) -> dict:
    """The manifest stating this format and its version (where it already names them, in their place)."""
    return {**manifest, "format": FORMAT_NAME, "format_version": FORMAT_VERSION}


def write_manifest(path: Path, manifest: dict) -> str:
    """Writes `manifest` (stamped with this format and its version, sealed) to `path`, replacing what was
    there atomically, and returns its sha256. Raises PackageError, writing nothing, where every loader would
    refuse it."""
    raw = seal_manifest(stamped(manifest))
    read_manifest(raw)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return manifest_digest(raw)[1]


def manifest_digest(raw: bytes) -> tuple[str, str]:
    """(the sha256 the bytes state, the sha256 they have) of a sealed manifest."""
    stated = _SEAL.findall(raw)
    if len(stated) != 1:
        raise PackageError("manifest.json does not state its sha256 once (manifest_sha256); it was not written "
                           "by `webmoe convert`, or was changed: convert the checkpoint again")
    body = _SEAL.sub(f'"manifest_sha256": "{_ZERO}"'.encode(), raw)
    return stated[0].decode(), hashlib.sha256(body).hexdigest()


def read_manifest(raw: bytes, digest: str | None = None) -> dict:
    """The validated manifest of `raw` (the bytes of manifest.json); `digest` pins the sha256 it must have."""
    m = parse_json(raw, "manifest.json", PackageError, MAX_MANIFEST_BYTES)
    if not isinstance(m, dict):
        raise PackageError("malformed manifest.json: expected a JSON object")
    check_version(m)
    stated, actual = manifest_digest(raw)
    if stated != actual:
        raise PackageError(f"manifest.json was changed after conversion: its bytes have sha256 {actual}, it states "
                           f"{stated}; convert or download the package again")
    if digest is not None and digest.lower() != actual:
        raise PackageError(f"the package's manifest has sha256 {actual}, not the {digest} asked for")
    return validate_manifest(m)


def check_version(m: dict) -> None:
    if m.get("format") != FORMAT_NAME:
        raise PackageError(f"manifest.json is not an RDRR package (format {str(m.get('format'))[:64]!r})")
    version = m.get("format_version")
    if not (isinstance(version, int) and not isinstance(version, bool)):
        raise PackageError("malformed manifest.json: format_version is not an integer")
    if version > FORMAT_VERSION:
        raise PackageError(f"package format {version} is newer than this webmoe (reads {FORMAT_VERSION}); "
                           "upgrade webmoe")
    if version < FORMAT_VERSION:
        raise PackageError(f"package format {version} is older than this webmoe reads ({FORMAT_VERSION}); "
                           "convert the checkpoint again with `webmoe convert`")


def validate_manifest(m: dict) -> dict:
    """The schema, then the cross-references between shards, tensors, experts and the plan."""
    check_schema(m, "manifest", "manifest.json", PackageError)
    files = {}
    for s in m["shards"]:
        if s["file"] in files:
            raise PackageError(f"malformed manifest.json: shard {s['file']} is listed twice")
        files[s["file"]] = s
    for name, t in m["tensors"].items():
        shard = files.get(t["shard"])
        if shard is None or shard["kind"] != "dense" or t["offset"] + t["size"] > shard["size"]:
            raise PackageError(f"malformed manifest.json: tensor {name!r} lies outside the dense shards")
    tok = files.get(m["tokenizer"]["file"])
    if tok is None or tok["kind"] != "tokenizer":
        raise PackageError("malformed manifest.json: the tokenizer file is not among the shards")
    moe = m["moe"]
    if any(layer >= m["config"]["num_layers"] for layer in moe["moe_layers"]):
        raise PackageError("malformed manifest.json: an MoE layer beyond num_layers")
    expected = {f"{layer}_{e}" for layer in moe["moe_layers"] for e in range(moe["num_experts"])}
    if set(m["experts"]) != expected:
        raise PackageError(f"malformed manifest.json: the experts listed are not those of layers {moe['moe_layers']} "
                           f"x {moe['num_experts']} experts")
    for key, e in m["experts"].items():
        shard = files.get(e["shard"])
        if shard is None or shard.get("expert") != key or e["size"] != moe["expert_layout"]["expert_bytes"] \
                or e["size"] > shard["size"]:
            raise PackageError(f"malformed manifest.json: expert {key} does not point at its own shard")
    usage = m.get("routing_stats", {}).get("usage", {})
    if usage and (set(usage) != {str(layer) for layer in moe["moe_layers"]}
                  or any(len(counts) != moe["num_experts"] for counts in usage.values())):
        raise PackageError("malformed manifest.json: routing_stats.usage needs a count per expert for each MoE layer")
    validate_plan(m["plan"])
    check_config_against_plan(m)
    return m


def check_config_against_plan(m: dict) -> None:
    """What the config and moe sections state must be what the plan computes: layers (one attention step
    each), width, vocabulary, heads, MoE layers, experts and top-k. (Runtimes size tables from the config.)"""
    plan, config, moe = m["plan"], m["config"], m["moe"]
    steps = plan["steps"]
    attention = [s["params"] for s in steps if s["kernel"] == "attention"]
    routers = [s["params"] for s in steps if s["kernel"] == "router"]
    embed = [s["params"] for s in steps if s["kernel"] == "embed"]
    stated = [("config.num_layers", config["num_layers"], len(attention), "attention steps"),
              ("config.vocab_size", config["vocab_size"], plan["buffers"][plan["io"]["logits"]]["shape"][-1],
               "the logits' width"),
              ("moe.moe_layers", moe["moe_layers"], [r["layer"] for r in plan["moe_layers"]], "the MoE layers")]
    stated += [("config.hidden_size", config["hidden_size"], p["H"], "the embedding's width") for p in embed]
    stated += [("config.num_heads", config["num_heads"], p["n_heads"], "an attention step's heads") for p in attention]
    stated += [(f"moe.{key}", moe[key], p[param], f"a router step's {param}")
               for p in routers for key, param in (("num_experts", "E"), ("top_k", "K"))]
    for what, value, computed, where in stated:
        if value != computed:
            raise PackageError(f"malformed manifest.json: {what} is {value}, but the plan has {computed} "
                               f"({where}); the manifest was edited or written wrongly")


def validate_plan(plan: dict) -> None:
    """The plan's structure records point at real steps and buffers."""
    steps, buffers = plan["steps"], plan["buffers"]
    for role in ("ids", "positions", "cache_rows", "logits", "token"):
        if plan["io"][role] not in buffers:
            raise PackageError(f"malformed plan: io.{role} names no plan buffer")
    n = len(steps)
    for adapters, changed in plan.get("variants", {}).items():
        if any(int(i) >= n for i in changed):
            raise PackageError(f"malformed plan: variants.{adapters} changes a step the plan does not have")
    declared = set(plan["variables"])
    adapted = [plan_for(plan, adapters)["steps"] for adapters in plan.get("variants", {})]
    for step in [*steps, *plan["sampler"], *(s for a in adapted for s in a)]:
        used = set().union(*(variables(e) for e in [*step["dispatch"], *step["params"].values()]))
        if used - declared:
            raise PackageError(f"malformed plan: step {step.get('label') or step['kernel']} uses "
                               f"{', '.join(sorted(used - declared))}, which the plan's variables do not declare")
    for rec in plan["moe_layers"]:
        ok = rec["topk_ids"] in buffers and rec["router_input"] in buffers
        if not ok or not (rec["router_logits_step"] < rec["router_step"] < rec["experts"][0] < rec["experts"][1] <= n):
            raise PackageError(f"malformed plan: bad MoE layer record {rec!r}")
        if any("experts" not in steps[i]["bind"].values() for i in range(*rec["experts"])):
            raise PackageError(f"malformed plan: MoE layer {rec['layer']}'s expert steps do not read the slab")
