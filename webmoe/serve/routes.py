"""A/B routes: a route name that clients ask for as their `model` splits traffic between arms (served
models, or two versions of one), by weight or, when the request names a `user`, by a stable hash of it (a
user stays in one arm). Each arm keeps statistics — requests, errors, latency, tokens/s, user feedback —
and GET /routes compares every arm with the first (the control) with two-sided tests. A route may roll
back: when an arm's error rate over its latest requests, or its 95th-percentile latency, crosses its
threshold (after a minimum of requests), its traffic returns to the control and the event is logged (the
seeds' andon).

    webmoe serve A B --route chat=A:0.9,B:0.1 [--rollback-error-rate 0.2] [--rollback-p95-s 30]
"""
from __future__ import annotations

import hashlib
import random
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .api_errors import ApiError
from .significance import proportion_test, welch_test


def percentile95(seconds) -> float | None:
    """The 95th percentile (nearest rank) of the latencies, or None for none."""
    s = sorted(seconds)
    return s[min(len(s) - 1, int(0.95 * len(s)))] if s else None


@dataclass
class Arm:
    model: str
    weight: float
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    seconds: float = 0.0
    latencies: deque = field(default_factory=lambda: deque(maxlen=2000))   # seconds, the latest
    feedback: list = field(default_factory=lambda: [0, 0])                # [positive, negative]
    recent: deque = field(default_factory=deque)     # (ok, seconds) of the latest requests: what the andon judges

    def p95(self) -> float | None:
        return percentile95(self.latencies)

    def report(self) -> dict:
        lat = list(self.latencies)
        return {"model": self.model, "weight": self.weight, "requests": self.requests, "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else None,
                "latency_mean_s": sum(lat) / len(lat) if lat else None, "latency_p95_s": self.p95(),
                "tokens_per_s": self.tokens / self.seconds if self.seconds else None,
                "feedback": {"positive": self.feedback[0], "negative": self.feedback[1]}}


class Route:
    def __init__(self, name: str, arms: list[tuple[str, float]], error_rate: float | None = None,
                 p95_s: float | None = None, min_requests: int = 20, window: int = 50):
        """error_rate, p95_s: the andon's thresholds, judged over an arm's last `window` requests once it
        has min_requests of them."""
        if len(arms) < 2 or any(w < 0 for _, w in arms) or sum(w for _, w in arms) <= 0:
            raise ValueError(f"route {name}: two or more arms with non-negative weights, not all zero")
        self.name = name
        self.arms = [Arm(m, w, recent=deque(maxlen=window)) for m, w in arms]
        self.error_rate, self.p95_s, self.min_requests = error_rate, p95_s, min_requests
        self.events: list[dict] = []

    def pick(self, user: str | None) -> Arm:
        total = sum(a.weight for a in self.arms)
        if user is None:
            x = random.random() * total
        else:   # a stable cohort: the same user, the same arm (while the weights stay)
            x = int.from_bytes(hashlib.sha256(f"{self.name}\0{user}".encode()).digest()[:8], "big") / 2**64 * total
        for arm in self.arms:
            if x < arm.weight:
                return arm
            x -= arm.weight
        return next(a for a in reversed(self.arms) if a.weight > 0)

    def record(self, arm: Arm, ok: bool, seconds: float, tokens: int) -> None:
        arm.requests += 1
        arm.errors += not ok
        arm.recent.append((ok, seconds))
        if ok:
            arm.latencies.append(seconds)
            arm.tokens += tokens
            arm.seconds += seconds
        self.check(arm)

    def check(self, arm: Arm) -> None:
        """The andon: an arm other than the control past a threshold gives its traffic to the control."""
        control = self.arms[0]
        if arm is control or arm.weight == 0 or len(arm.recent) < self.min_requests:
            return
        reasons = []
        errors = sum(not ok for ok, _ in arm.recent) / len(arm.recent)
        if self.error_rate is not None and errors > self.error_rate:
            reasons.append(f"error rate {errors:.3f} over its last {len(arm.recent)} requests > {self.error_rate}")
        p95 = percentile95([s for ok, s in arm.recent if ok])
        if self.p95_s is not None and p95 is not None and p95 > self.p95_s:
            reasons.append(f"p95 latency {p95:.2f} s over its last {len(arm.recent)} requests > {self.p95_s} s")
        if reasons:
            control.weight += arm.weight
            arm.weight = 0.0
            event = {"time": time.time(), "route": self.name, "rolled_back": arm.model, "to": control.model,
                     "why": "; ".join(reasons)}
            self.events.append(event)
            print(f"webmoe: route {self.name}: rolled back {arm.model} -> {control.model} ({event['why']})", flush=True)

    def report(self) -> dict:
        control = self.arms[0]
        arms = []
        for arm in self.arms:
            r = arm.report()
            if arm is not control:
                r["vs_control_p"] = {
                    "error_rate": proportion_test(arm.errors, arm.requests, control.errors, control.requests),
                    "latency": welch_test(list(arm.latencies), list(control.latencies)),
                    "feedback": proportion_test(arm.feedback[0], sum(arm.feedback), control.feedback[0],
                                                sum(control.feedback))}
            arms.append(r)
        return {"arms": arms, "events": self.events,
                "rollback": {"error_rate": self.error_rate, "p95_s": self.p95_s, "min_requests": self.min_requests,
                             "window": self.arms[0].recent.maxlen}}


COMPLETION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class Served:
    """A routed completion that may get feedback: its arm, and each voter's vote (voter: a hash of the API
    key that sent it), so that one key's repeated votes count once (the latest)."""
    route: Route
    arm: Arm
    votes: dict = field(default_factory=dict)          # voter -> positive


class Routes:
    """Route names -> Route, and which arm served each recent completion (for feedback)."""

    def __init__(self, routes: list[Route] = ()):
        self.routes = {r.name: r for r in routes}
        self.served: OrderedDict[str, Served] = OrderedDict()     # completion id -> its arm, bounded

    def pick(self, model: str | None, user: str | None) -> tuple[Route | None, Arm | None, str | None]:
        route = self.routes.get(model)
        if route is None:
            return None, None, model
        arm = route.pick(user)
        return route, arm, arm.model

    def remember(self, completion_id: str, route: Route, arm: Arm) -> None:
        self.served[completion_id] = Served(route, arm)
        while len(self.served) > 100_000:
            self.served.popitem(last=False)

    def feedback(self, completion_id: str, positive: bool, voter: str) -> bool:
        """Counts a vote on a completion; a voter's second vote on it replaces the first (returns True then),
        so feedback cannot be stuffed by repeating it."""
        if not COMPLETION_ID.fullmatch(completion_id):
            raise ApiError("id is not a completion id (up to 64 letters, digits, '-' and '_')", 400, param="id")
        served = self.served.get(completion_id)
        if served is None:
            raise ApiError(f"no routed completion {completion_id} is remembered", 404, param="id")
        before = served.votes.get(voter)
        if before is not None:
            served.arm.feedback[0 if before else 1] -= 1
        served.votes[voter] = positive
        served.arm.feedback[0 if positive else 1] += 1
        return before is not None

    def report(self) -> dict:
        return {name: r.report() for name, r in self.routes.items()}


def parse_route(spec: str, **thresholds) -> Route:
    """NAME=MODEL:WEIGHT,MODEL:WEIGHT (the first arm is the control)."""
    name, _, arms = spec.partition("=")
    try:
        pairs = [(m, float(w)) for m, _, w in (a.rpartition(":") for a in arms.split(","))]
    except ValueError:
        raise ValueError(f"--route {spec!r}: expected NAME=MODEL:WEIGHT,MODEL:WEIGHT") from None
    if not name or any(not m for m, _ in pairs):
        raise ValueError(f"--route {spec!r}: expected NAME=MODEL:WEIGHT,MODEL:WEIGHT")
    return Route(name, pairs, **thresholds)
