"""Admission to one model's engine: `running` generations at once (one today: the engine holds one
sequence), up to `max_waiting` more queued for at most `max_wait_s` each. Beyond the queue a request gets
429 at once, after the wait 503, both with Retry-After; a client that goes away while queued leaves it."""
from __future__ import annotations

import asyncio
import math
import time
from contextlib import asynccontextmanager

from .api_errors import ApiError


class Admission:
    def __init__(self, running: int = 1, max_waiting: int = 64, max_wait_s: float = 120.0):
        self.slots = asyncio.Semaphore(running)
        self.max_waiting, self.max_wait_s = max_waiting, max_wait_s
        self.waiting = 0
        self.running = 0
        self.recent_s = 10.0          # how long a generation took lately: the Retry-After hint

    def retry_after(self) -> dict:
        return {"Retry-After": str(max(1, math.ceil(self.recent_s * (1 + self.waiting))))}

    @asynccontextmanager
    async def slot(self, model: str):
        if self.waiting >= self.max_waiting:
            raise ApiError(f"{model} is busy: {self.waiting} requests are already waiting; retry later", 429,
                           code="queue_full", headers=self.retry_after())
        self.waiting += 1
        try:
            await asyncio.wait_for(self.slots.acquire(), self.max_wait_s)
        except asyncio.TimeoutError:
            raise ApiError(f"{model} stayed busy for {self.max_wait_s:g} s; retry later", 503,
                           code="queue_timeout", headers=self.retry_after()) from None
        finally:
            self.waiting -= 1
        t0 = time.monotonic()
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self.recent_s = 0.7 * self.recent_s + 0.3 * (time.monotonic() - t0)
            self.slots.release()
