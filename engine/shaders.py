"""Loads a kernel from shaders/, applies the preprocessor and reads its interface.

The preprocessor (documented in shaders/README.md, implemented again in web/ for the browser) knows three
directives, each on a line of its own:
    //!include FILE          the text of shaders/FILE, once per kernel
    //!if NAME  /  //!if !NAME  /  //!else  /  //!endif     keep lines when NAME is (not) among the defines
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from webmoe.shaders import SHADER_DIR

_BINDING = re.compile(r"@binding\((\d+)\)\s*var<([\w\s,]+)>\s*(\w+)")
_PARAMS = re.compile(r"struct\s+Params\s*\{([^}]*)\}")
_FIELD = re.compile(r"(\w+)\s*:\s*(u32|i32|f32)")


class ShaderError(ValueError):
    pass


@dataclass(frozen=True)
class Binding:
    index: int
    space: str  # "uniform", "storage, read" or "storage, read_write"


@dataclass(frozen=True)
class Kernel:
    name: str
    defines: frozenset[str]
    source: str
    bindings: dict[str, Binding]        # variable name -> binding
    params: tuple[tuple[str, str], ...]  # (field, wgsl type) in struct order; all fields are 4 bytes


def preprocess(name: str, defines: frozenset[str], read=lambda f: (SHADER_DIR / f).read_text()) -> str:
    out: list[str] = []
    included: set[str] = set()
    keep: list[bool] = []  # one entry per open //!if: whether its current branch is kept

    def emit(file: str) -> None:
        for line_no, line in enumerate(read(file).splitlines(), 1):
            directive = line.strip()
            if directive.startswith("//!if "):
                cond = directive[6:].strip()
                want = not cond.startswith("!")
                keep.append((cond.lstrip("!") in defines) == want)
            elif directive == "//!else":
                if not keep:
                    raise ShaderError(f"{file}:{line_no}: //!else without //!if")
                keep[-1] = not keep[-1]
            elif directive == "//!endif":
                if not keep:
                    raise ShaderError(f"{file}:{line_no}: //!endif without //!if")
                keep.pop()
            elif not all(keep):
                continue
            elif directive.startswith("//!include "):
                inc = directive[11:].strip()
                if inc not in included:
                    included.add(inc)
                    emit(inc)
            else:
                out.append(line)

    emit(f"{name}.wgsl")
    if keep:
        raise ShaderError(f"{name}.wgsl: unterminated //!if")
    return "\n".join(out) + "\n"


@lru_cache(maxsize=None)
def load_kernel(name: str, defines: frozenset[str] = frozenset()) -> Kernel:
    if not re.fullmatch(r"[a-z0-9_]+", name) or not (SHADER_DIR / f"{name}.wgsl").is_file():
        raise ShaderError(f"unknown kernel {name!r}")
    source = preprocess(name, defines)
    bindings = {m[3]: Binding(int(m[1]), " ".join(m[2].split())) for m in _BINDING.finditer(source)}
    struct = _PARAMS.search(source)
    params = tuple(_FIELD.findall(struct[1])) if struct else ()
    return Kernel(name, defines, source, bindings, params)
