"""Loads a kernel from shaders/, applies the preprocessor and reads its interface.

The preprocessor (documented in shaders/README.md, implemented again in web/ for the browser) knows these
directives, each on a line of its own:
    //!include FILE          the text of shaders/FILE, once per kernel
    //!if NAME  /  //!if !NAME  /  //!elif NAME  /  //!elif !NAME  /  //!else  /  //!endif
                             keep the lines of the first branch whose NAME is (not) among the defines
    //!const NAME           becomes `const NAME: u32 = <value>u;` with the value the plan step gives
                             (kernel geometry: converter/plan.py GEOMETRY is its one source)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from webmoe.shaders import SHADER_DIR
from .errors import ShaderError

_BINDING = re.compile(r"@binding\((\d+)\)\s*var<([\w\s,]+)>\s*(\w+)")
_PARAMS = re.compile(r"struct\s+Params\s*\{([^}]*)\}")
_FIELD = re.compile(r"(\w+)\s*:\s*(u32|i32|f32)")


@dataclass(frozen=True)
class Binding:
    index: int
    space: str  # "uniform", "storage, read" or "storage, read_write"


@dataclass(frozen=True)
class Kernel:
    name: str
    defines: frozenset[str]
    consts: tuple[tuple[str, int], ...]   # sorted (name, value) pairs given to //!const
    source: str
    bindings: dict[str, Binding]        # variable name -> binding
    params: tuple[tuple[str, str], ...]  # (field, wgsl type) in struct order; all fields are 4 bytes


def preprocess(name: str, defines: frozenset[str], consts: dict[str, int] | None = None,
               read=lambda f: (SHADER_DIR / f).read_text()) -> str:
    consts = consts or {}
    declared: set[str] = set()
    out: list[str] = []
    included: set[str] = set()
    # one entry per open //!if: [whether its current branch is kept, whether any of its branches was]
    keep: list[list[bool]] = []
    opened: list[str] = []              # where each open //!if is, for the error of one left open

    def holds(cond: str) -> bool:
        return (cond.lstrip("!") in defines) != cond.startswith("!")

    def emit(file: str) -> None:
        for line_no, line in enumerate(read(file).splitlines(), 1):
            directive = line.strip()
            if directive.startswith("//!if "):
                taken = holds(directive[6:].strip())
                keep.append([taken, taken])
                opened.append(f"{file}:{line_no}")
            elif directive.startswith("//!elif ") or directive == "//!else":
                if not keep:
                    raise ShaderError(f"{file}:{line_no}: {directive.split()[0]} without //!if")
                branch = not keep[-1][1] and (directive == "//!else" or holds(directive[8:].strip()))
                keep[-1] = [branch, keep[-1][1] or branch]
            elif directive == "//!endif":
                if not keep:
                    raise ShaderError(f"{file}:{line_no}: //!endif without //!if")
                keep.pop()
                opened.pop()
            elif not all(kept for kept, _ in keep):
                continue
            elif directive.startswith("//!const "):
                const = directive[9:].strip()
                value = consts.get(const)
                if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31):
                    raise ShaderError(f"{file}:{line_no}: constant {const} needs a positive integer from the plan, "
                                      f"got {value!r}")
                declared.add(const)
                out.append(f"const {const}: u32 = {value}u;")
            elif directive.startswith("//!include "):
                inc = directive[11:].strip()
                if inc not in included:
                    included.add(inc)
                    emit(inc)
            else:
                out.append(line)

    emit(f"{name}.wgsl")
    if keep:
        raise ShaderError(f"{opened[-1]}: unterminated //!if")
    if set(consts) - declared:
        raise ShaderError(f"{name}.wgsl declares no constant {sorted(set(consts) - declared)}")
    return "\n".join(out) + "\n"


def load_kernel(name: str, defines=(), consts: dict[str, int] | None = None) -> Kernel:
    return _load_kernel(name, frozenset(defines), tuple(sorted((consts or {}).items())))


@lru_cache(maxsize=None)
def _load_kernel(name: str, defines: frozenset[str], consts: tuple[tuple[str, int], ...]) -> Kernel:
    if not re.fullmatch(r"[a-z0-9_]+", name) or not (SHADER_DIR / f"{name}.wgsl").is_file():
        raise ShaderError(f"unknown kernel {name!r}")
    return kernel_of(name, defines, consts, preprocess(name, defines, dict(consts)))


def kernel_of(name: str, defines: frozenset[str], consts: tuple[tuple[str, int], ...], source: str) -> Kernel:
    """A preprocessed source with its interface read: bindings by variable name, the Params fields."""
    bindings = {m[3]: Binding(int(m[1]), " ".join(m[2].split())) for m in _BINDING.finditer(source)}
    struct = _PARAMS.search(source)
    params = tuple(_FIELD.findall(struct[1])) if struct else ()
    return Kernel(name, defines, consts, source, bindings, params)
