"""Opens an RDRR package directory: validates the manifest and serves tensor and expert bytes from
memory-mapped shards, each checked against its sha256 the first time it is read."""
from __future__ import annotations

import hashlib
import json
import mmap
from pathlib import Path
from .errors import PackageError

FORMAT_VERSION = 3          # the one format this webmoe reads (converter/writer.py writes it)
_REQUIRED = {"format": str, "format_version": int, "family": str, "config": dict, "moe": dict,
             "tokenizer": dict, "plan": dict, "tensors": dict, "experts": dict, "shards": list}


class Package:
    def __init__(self, path):
        self.dir = Path(path)
        mpath = self.dir / "manifest.json" if self.dir.is_dir() else self.dir
        if mpath.name == "manifest.json" and mpath.parent != self.dir:
            self.dir = mpath.parent
        if not mpath.is_file():
            raise PackageError(f"no RDRR package at {path} (manifest.json not found)")
        try:
            m = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PackageError(f"malformed manifest.json: {e}") from None
        self.manifest = validate(m)
        self.shards = {s["file"]: s for s in m["shards"]}
        for s in m["shards"]:
            p = self.dir / s["file"]
            if not p.is_file():
                raise PackageError(f"shard {s['file']} is missing from {self.dir}")
            if p.stat().st_size != s["size"]:
                raise PackageError(f"shard {s['file']} has {p.stat().st_size} bytes, the manifest says "
                                   f"{s['size']}: the package is truncated or corrupt")
        self._maps: dict[str, mmap.mmap] = {}

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def moe(self) -> dict:
        return self.manifest["moe"]

    def shard(self, name: str) -> memoryview:
        if name not in self._maps:
            with open(self.dir / name, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.shards[name]["size"] else b""
            if hashlib.sha256(mm).hexdigest() != self.shards[name]["sha256"]:
                raise PackageError(f"shard {name} is corrupt (sha256 mismatch); convert or download it again")
            self._maps[name] = mm
        return memoryview(self._maps[name])

    def tensor_bytes(self, name: str) -> memoryview:
        t = self.manifest["tensors"][name]
        return self.shard(t["shard"])[t["offset"]:t["offset"] + t["size"]]

    def expert_bytes(self, layer: int, expert: int) -> memoryview:
        e = self.manifest["experts"].get(f"{layer}_{expert}")
        if e is None:
            raise PackageError(f"expert {layer}_{expert} is not in the manifest")
        return self.shard(e["shard"])[:e["size"]]

    def close(self) -> None:
        for mm in self._maps.values():
            if isinstance(mm, mmap.mmap):
                mm.close()
        self._maps.clear()


def validate(m) -> dict:
    if not isinstance(m, dict):
        raise PackageError("malformed manifest.json: expected a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(m.get(key), kind):
            raise PackageError(f"malformed manifest.json: {key!r} missing or not a {kind.__name__}")
    if m["format"] != "rdrr":
        raise PackageError(f"manifest.json is not an RDRR package (format {m['format']!r})")
    if m["format_version"] > FORMAT_VERSION:
        raise PackageError(f"package format {m['format_version']} is newer than this webmoe "
                           f"(reads {FORMAT_VERSION}); upgrade webmoe")
    if m["format_version"] < FORMAT_VERSION:
        raise PackageError(f"package format {m['format_version']} is older than this webmoe reads "
                           f"({FORMAT_VERSION}); convert the checkpoint again with `webmoe convert`")
    files = {}
    for s in m["shards"]:
        if not (isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("size"), int)
                and isinstance(s.get("sha256"), str)):
            raise PackageError(f"malformed shard entry {s!r}")
        if "/" in s["file"] or "\\" in s["file"] or s["file"].startswith("."):
            raise PackageError(f"shard name {s['file']!r} is not a plain file name")
        files[s["file"]] = s["size"]
    for name, t in m["tensors"].items():
        if not (isinstance(t, dict) and t.get("shard") in files and isinstance(t.get("offset"), int)
                and isinstance(t.get("size"), int) and t.get("dtype") in ("f32", "f16")
                and 0 <= t["offset"] and t["offset"] + t["size"] <= files[t["shard"]]):
            raise PackageError(f"malformed tensor entry {name!r}")
    for key, e in m["experts"].items():
        if not (isinstance(e, dict) and e.get("shard") in files and isinstance(e.get("size"), int)
                and e["size"] <= files[e["shard"]]):
            raise PackageError(f"malformed expert entry {key!r}")
    validate_plan(m["plan"])
    return m


_PLAN = {"buffers": dict, "steps": list, "moe_layers": list, "sampler": list, "io": dict, "resources": dict}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_plan(plan: dict) -> None:
    """The plan's structure records point at real steps and buffers (web/manifest.js checks the same)."""
    for key, kind in _PLAN.items():
        if not isinstance(plan.get(key), kind):
            raise PackageError(f"malformed plan: {key!r} missing or not a {kind.__name__}")
    steps, buffers = plan["steps"], plan["buffers"]
    if not all(isinstance(s, dict) and isinstance(s.get("kernel"), str) and isinstance(s.get("bind"), dict)
               for s in steps + plan["sampler"]):
        raise PackageError("malformed plan: a step lacks its kernel or bindings")
    for role in ("ids", "logits", "token"):
        if plan["io"].get(role) not in buffers:
            raise PackageError(f"malformed plan: io.{role} names no plan buffer")
    n = len(steps)
    for rec in plan["moe_layers"]:
        ok = (isinstance(rec, dict) and all(_is_int(rec.get(k)) for k in ("layer", "router_logits_step", "router_step"))
              and isinstance(rec.get("experts"), list) and len(rec["experts"]) == 2 and all(map(_is_int, rec["experts"]))
              and rec.get("topk_ids") in buffers and rec.get("router_input") in buffers)
        if not ok or not (0 <= rec["router_logits_step"] < rec["router_step"] < rec["experts"][0] < rec["experts"][1] <= n):
            raise PackageError(f"malformed plan: bad MoE layer record {rec!r}")
        if any("experts" not in steps[i]["bind"].values() for i in range(*rec["experts"])):
            raise PackageError(f"malformed plan: MoE layer {rec['layer']}'s expert steps do not read the slab")
