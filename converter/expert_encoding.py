"""Experts encoded on every core. Quantising to q4 runs at about 12-18 M weights/s on one core (numpy,
docs/benchmarks.md), so a converter that quantised in its main process would be bound by one core, not by
reading the checkpoint (OLMoE-1B-7B's 6.4 B expert weights took most of a 513-second conversion). Experts
are independent, so worker processes encode them (writer.expert_shard, a pure function) while the main
process reads the next ones and writes the finished shards in order; at most two experts per worker are
in flight, so memory stays bounded.

    with expert_encoder("q4", layout, total_weights) as encode_all:
        for (layer, expert), data in encode_all(((l, e), parts) for ...):   # in the order given
            writer.add_expert_shard(layer, expert, data, layout)
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from .writer import expert_shard

QUANTISED = ("q8", "q4", "mxfp4")      # formats whose encoding costs more than reading (f16, f32 only cast)
MIN_PARALLEL_WEIGHTS = 64 << 20        # below this, starting workers costs more than it saves


def workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def expert_encoder(dtype: str, layout: dict, total_weights: int, processes: int | None = None):
    """A function from ((layer, expert), parts) pairs to ((layer, expert), shard bytes) pairs in the same
    order: encoded by a pool of `processes` workers (default: one per core) for quantised formats of
    enough weights, else here, one by one."""
    processes = processes or workers()
    if (dtype not in QUANTISED or total_weights < MIN_PARALLEL_WEIGHTS or processes < 2
            or "fork" not in multiprocessing.get_all_start_methods()):
        yield lambda jobs: ((key, expert_shard(parts, layout, f"{key[0]}_{key[1]}")) for key, parts in jobs)
        return
    # fork, not spawn: spawn would import the caller's main script again in every worker (running whatever
    # an unguarded script does). The workers are started here, before the progress bar's thread exists,
    # and only ever run numpy on what they are sent.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        pool.submit(int).result()          # forks every worker now
        yield _in_order(pool, layout, 2 * processes)


def _in_order(pool: ProcessPoolExecutor, layout: dict, in_flight: int) -> Callable:
    def encode_all(jobs: Iterable) -> Iterator:
        pending: deque = deque()
        for key, parts in jobs:
            pending.append((key, pool.submit(expert_shard, parts, layout, f"{key[0]}_{key[1]}")))
            if len(pending) >= in_flight:
                key0, future = pending.popleft()
                yield key0, future.result()
        while pending:
            key0, future = pending.popleft()
            yield key0, future.result()
    return encode_all
