"""A Hugging Face checkpoint directory: config, tokenizer files and lazily read safetensors weights."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from webmoe.format.strict_json import check_schema, parse_json

from .errors import ConversionError
from .safetensors_file import SafetensorsFile, open_regular

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


MAX_JSON_BYTES = 64 << 20


def read_json(path: Path, what: str, required: bool = True) -> dict | None:
    if not path.exists():
        if required:
            raise ConversionError(f"missing {what}: {path}")
        return None
    with open_regular(path, path.name) as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    data = parse_json(raw, path.name, ConversionError, MAX_JSON_BYTES)
    if not isinstance(data, dict):
        raise ConversionError(f"malformed {what} {path.name}: expected a JSON object")
    return data


class Checkpoint:
    def __init__(self, src: Path):
        src = Path(src)
        if not src.is_dir():
            raise ConversionError(f"checkpoint directory not found: {src}")
        self.dir = src
        self.config = read_json(src / "config.json", "config.json")
        check_schema(self.config, "hf_config", "config.json", ConversionError)
        self.generation_config = read_json(src / "generation_config.json", "generation_config.json",
                                           required=False) or {}
        self.tokenizer_config = read_json(src / "tokenizer_config.json", "tokenizer_config.json",
                                          required=False) or {}
        if not (src / "tokenizer.json").is_file():
            raise ConversionError(f"missing tokenizer.json in {src} (webmoe packages carry the fast "
                                  "tokenizer; save it with tokenizer.save_pretrained)")
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, SafetensorsFile] = {}
        for path in self._weight_files():
            f = SafetensorsFile(path)
            self.files[path.name] = f
            for name in f.entries:
                if name in self.where:
                    raise ConversionError(f"tensor {name} is in both {self.where[name].path.name} and {path.name}")
                self.where[name] = f

    def _weight_files(self) -> list[Path]:
        index = read_json(self.dir / "model.safetensors.index.json", "safetensors index", required=False)
        if index is not None:
            weight_map = index.get("weight_map")
            files = list(weight_map.values()) if isinstance(weight_map, dict) else []
            if not files or not all(isinstance(n, str) for n in files):
                raise ConversionError("model.safetensors.index.json has no weight_map of tensor -> file name")
            names = sorted(set(files))
            bad = [n for n in names if "/" in n or "\\" in n or n.startswith(".")]
            if bad:
                raise ConversionError(f"model.safetensors.index.json names files outside the checkpoint: {bad[:3]}")
            missing = [n for n in names if not (self.dir / n).is_file()]
            if missing:
                raise ConversionError(f"shards named in model.safetensors.index.json are missing: {missing}")
            return [self.dir / n for n in names]
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"no *.safetensors weights in {self.dir} (PyTorch .bin checkpoints are "
                                  "not read: re-save with safe_serialization=True)")
        return files

    def check_layer_count(self, num_layers: int) -> None:
        """config.json's layer count is the checkpoint's: no layer tensors beyond it (multi-token
        prediction layers, which DeepSeek-V3 checkpoints carry after the last, excepted)."""
        extra = self.config.get("num_nextn_predict_layers") or 0
        layers = {int(m[1]) for name in self.where for m in [_LAYER.search(name)] if m}
        beyond = sorted(i for i in layers if i >= num_layers + extra)
        if beyond:
            raise ConversionError(f"config.json says num_hidden_layers = {num_layers}, but the checkpoint holds "
                                  f"layer {beyond[0]}{' and more' if len(beyond) > 1 else ''}")

    def has(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def read(self, name: str, shape: tuple[int, ...] | None = None, index: int | None = None) -> np.ndarray:
        """The float32 tensor `name` (or its slice [index]), checked against the expected shape."""
        t = self._file(name).read(name, index)
        if shape is not None and tuple(t.shape) != tuple(shape):
            what = f"{name}[{index}]" if index is not None else name
            raise ConversionError(f"tensor {what} has shape {list(t.shape)}, expected {list(shape)} "
                                  "from config.json")
        return t

    def read_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a tensor as float32, reading only those bytes."""
        return self._file(name).read(name, rows=(r0, r1))

    def read_raw(self, name: str, index: int | None = None) -> np.ndarray:
        return self._file(name).read_raw(name, index)

    @property
    def bytes_read(self) -> int:
        return sum(f.bytes_read for f in self.files.values())

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self.where:
            raise ConversionError(f"missing tensor {name} in the checkpoint")
        return self.where[name]
