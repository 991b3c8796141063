"""Plan expressions: sizes and parameters that depend on the call (the plan's `variables`: tokens T, the
sampler's settings, a bank's experts, ...).

An expression is an int, a variable name, [name, mul, div] meaning ceil(vars[name] * mul / div), or
{"min": [a, b]}, the smaller of two expressions. The browser runtime (web/expr.js) evaluates the same forms.
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
    if isinstance(expr, dict) and list(expr) == ["min"] and isinstance(expr["min"], list) and len(expr["min"]) == 2:
        return min(evaluate(e, env) for e in expr["min"])
    raise ValueError(f"bad plan expression {expr!r}")


def variables(expr) -> set[str]:
    if isinstance(expr, str):
        return {expr}
    if isinstance(expr, list):
        return {expr[0]}
    if isinstance(expr, dict):
        return set().union(*(variables(e) for e in expr.get("min", [])))
    return set()
