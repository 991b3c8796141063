"""Plan expressions: sizes that depend on the call (tokens T, start position pos, ...).

An expression is an int, a variable name, or [name, mul, div] meaning ceil(vars[name] * mul / div).
The browser runtime evaluates the same form.
"""
from __future__ import annotations


def evaluate(expr, env: dict[str, int]) -> int:
    if isinstance(expr, bool):
        raise ValueError(f"bad plan expression {expr!r}")
    if isinstance(expr, (int, float)):
        return expr
    if isinstance(expr, str):
        return env[expr]
    if isinstance(expr, list) and len(expr) == 3 and isinstance(expr[0], str):
        name, mul, div = expr
        return -(-env[name] * mul // div)
    raise ValueError(f"bad plan expression {expr!r}")


def variables(expr) -> set[str]:
    if isinstance(expr, str):
        return {expr}
    if isinstance(expr, list):
        return {expr[0]}
    return set()
