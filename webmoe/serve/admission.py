"""Admission to one model's engine: up to `running` requests at once (the engine's batch: --max-batch),
up to `max_waiting` more queued, first come first served, for at most `max_wait_s` each. A request that
finds a free slot runs at once; beyond the queue it gets 429 at once, after the wait 503, both with
Retry-After. A client that goes away while queued leaves the queue at once, and a slot given up is handed
straight to the next in line."""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import Callable

from .api_errors import ApiError

POLL_S = 0.1          # how often a queued request looks whether its client is still there


class ClientGone(Exception):
    """The client closed its connection while its request waited for a slot."""


class Admission:
    def __init__(self, running: int = 1, max_waiting: int = 64, max_wait_s: float = 120.0):
        if running < 1 or max_waiting < 0 or max_wait_s <= 0:
            raise ValueError("admission: running >= 1, max_waiting >= 0 and max_wait_s > 0")
        self.capacity, self.max_waiting, self.max_wait_s = running, max_waiting, max_wait_s
        self.running = 0                            # requests holding a slot
        self.queue: deque[asyncio.Future] = deque()  # waiting requests, in order; a slot is handed to the first
        self.recent_s = 10.0          # how long a generation took lately: the Retry-After hint

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def retry_after(self) -> dict:
        return {"Retry-After": str(max(1, math.ceil(self.recent_s * (1 + self.waiting))))}

    @asynccontextmanager
    async def slot(self, model: str, gone: Callable[[], bool] = lambda: False):
        """Holds a slot for the body of the `async with`. gone(): whether the client has left (then
        ClientGone, and its place in the queue is free)."""
        if self.running < self.capacity and not self.queue:
            self.running += 1                      # no await before this: a burst fills every free slot
        elif len(self.queue) >= self.max_waiting:
            raise ApiError(f"{model} is busy: {self.waiting} requests are already waiting; retry later", 429,
                           code="queue_full", headers=self.retry_after())
        else:
            await self._wait(model, gone)
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.recent_s = 0.7 * self.recent_s + 0.3 * (time.monotonic() - t0)
            self._release()

    async def _wait(self, model: str, gone: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        turn = loop.create_future()              # resolved by _release: the slot is ours
        self.queue.append(turn)
        deadline = loop.time() + self.max_wait_s
        try:
            while not turn.done():
                if gone():
                    raise ClientGone()
                left = deadline - loop.time()
                if left <= 0:
                    raise ApiError(f"{model} stayed busy for {self.max_wait_s:g} s; retry later", 503,
                                   code="queue_timeout", headers=self.retry_after())
                await asyncio.wait([turn], timeout=min(POLL_S, left))
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._release()                  # handed a slot just as we leave: on to the next
            else:
                turn.cancel()
                self.queue.remove(turn)
            raise

    def _release(self) -> None:
        while self.queue:
            turn = self.queue.popleft()
            if not turn.done():
                turn.set_result(None)            # the slot passes on: `running` stays
                return
        self.running -= 1
