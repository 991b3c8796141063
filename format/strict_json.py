"""JSON from outside, read strictly: bounded in size, no NaN or Infinity, no nesting deep enough to exhaust
the parser, every failure one clear error; and JSON Schema validation (the `jsonschema` library) whose
integers are Python ints only (JSON Schema would take 3.0 and, in Python, True)."""
from __future__ import annotations

import json
import re
from functools import lru_cache

import jsonschema
import numpy as np

from webmoe.schemas import SCHEMA_DIR

MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _depth(text: str) -> int:
    """Deepest nesting of brackets outside strings: checked before parsing, which recurses per level."""
    skeleton = _STRING.sub("", text).encode("utf-8")
    codes = np.frombuffer(skeleton, np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int64) - np.isin(codes, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def parse_json(raw: bytes | str, what: str, error, max_bytes: int):
    """The parsed value of `raw`, or `error(message)` raised naming `what`."""
    if len(raw) > max_bytes:
        raise error(f"{what} is {len(raw)} bytes, more than the {max_bytes} accepted")
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        if ("[" in text or "{" in text) and _depth(text) > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} deep")
        return json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:     # JSONDecodeError is a ValueError
        raise error(f"{what} is not valid JSON: {str(e)[:200]}") from None


def _is_int(checker, value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int)
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


@lru_cache(maxsize=None)
def schema(name: str) -> dict:
    """schemas/NAME.schema.json (checked as a schema once)."""
    value = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    _Validator.check_schema(value)
    return value


@lru_cache(maxsize=None)
def schema_validator(name: str):
    """The validator of schemas/NAME.schema.json."""
    return _Validator(schema(name))


def check_schema(value, name: str, what: str, error) -> None:
    """Raises error(message) naming where `value` first breaks schemas/NAME.schema.json."""
    try:
        best = jsonschema.exceptions.best_match(schema_validator(name).iter_errors(value))
    except RecursionError:
        raise error(f"malformed {what}: nested too deep") from None
    if best is not None:
        where = "/".join(str(p) for p in best.absolute_path) or "the top level"
        message = best.message if len(best.message) <= 300 else best.message[:300] + "..."
        raise error(f"malformed {what} at {where}: {message}")
