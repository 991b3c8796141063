"""The errors this run's numeric checks measured, by bound: each bound is set from them with its headroom
stated beside it, and conftest.py prints, at the end of a run, the largest error each bound met and how far
below the bound it stayed (a bound with a thousandfold headroom cannot catch a small regression)."""
from __future__ import annotations

from collections import defaultdict

MEASURED: dict[str, list[float]] = defaultdict(list)     # bound's name -> relative errors measured
BOUNDS: dict[str, float] = {}


def record(bound: str, limit: float, error: float) -> float:
    """Notes `error` (relative) against the bound named `bound` (value `limit`); returns the error."""
    MEASURED[bound].append(float(error))
    BOUNDS[bound] = limit
    return float(error)


def summary() -> list[str]:
    lines = []
    for bound, errors in sorted(MEASURED.items()):
        worst, limit = max(errors), BOUNDS[bound]
        room = f"{limit / worst:.0f}x below it" if worst > 0 else "all exact"
        lines.append(f"{bound}: bound {limit:.1e}, largest of {len(errors)} measured {worst:.2e} ({room})")
    return lines
