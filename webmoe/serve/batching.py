"""Continuous batching for the server: one thread per loaded engine runs its BatchDecoder. Requests'
sequences (one per choice) wait in line and join the running batch as slots free up; each pass decodes a
token for every active sequence, and each token goes straight to its request's event queue. A sequence
whose request is cancelled (its client went away) leaves at the next pass. A sequence that fails (its
prompt, its grammar, its row of a pass) ends with an error of its own while the others go on; an error's
text is its own request's or says nothing (the traceback goes to the server's console)."""
from __future__ import annotations

import gc
import threading
import traceback
from collections import deque
from dataclasses import dataclass

from webmoe.engine.batch import BatchDecoder
from webmoe.engine.errors import USER_ERRORS, PromptError
from webmoe.engine.generation import GenerationConfig


@dataclass(eq=False)
class Work:
    job: object      # openai_api.Job: put(*event), fail(message, status), cancelled (threading.Event), choice_done(choice, seq)
    choice: int
    prompt: object
    config: GenerationConfig


class BatchWorker:
    def __init__(self, engine):
        self.engine = engine
        self.batch = BatchDecoder(engine)
        self.waiting: deque[Work] = deque()
        self.running: dict[object, Work] = {}          # Sequence -> its work
        self.wake = threading.Condition()
        self.passes = 0                                # decode passes run (each for several sequences)
        self.tokens = 0                                # tokens those passes produced
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, daemon=True, name="webmoe-batch")
        self.thread.start()

    def stop(self) -> None:
        """Ends the thread once its sequences are done (the engine is being dropped)."""
        with self.wake:
            self.stopped = True
            self.wake.notify()

    def submit(self, work: Work) -> None:
        with self.wake:
            self.waiting.append(work)
            self.wake.notify()

    def _loop(self) -> None:
        try:
            self._run()
        finally:
            # The engine goes with its worker: its GPU memory and polling thread are given back now
            # (Engine.close), and what a request's traceback or grammar still holds of it in reference
            # cycles is collected now, not whenever Python's cyclic collector next runs (in a long-lived
            # process that was seldom: a chaos run grew by 18 MiB a swap without this).
            engine, self.engine, self.batch = self.engine, None, None
            engine.close()
            del engine
            gc.collect()

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.waiting and not self.batch.active:
                    if self.stopped:
                        return
                    self.wake.wait()
            try:
                self._admit()
                self._drop_cancelled()
                if self.batch.active:
                    produced = self.batch.step()
                    self.passes += 1
                    self.tokens += len(produced)
                    for seq, token in produced:
                        self._emit(seq, token)
            except Exception:      # the worker's own fault (a sequence's stays its own): the batch starts anew
                traceback.print_exc()
                for seq, work in list(self.running.items()):
                    work.job.fail("the server failed while generating this answer", 500)
                    work.job.choice_done(work.choice, seq)
                self.running.clear()
                self.batch = BatchDecoder(self.engine)

    def _admit(self) -> None:
        while not self.batch.full:
            with self.wake:
                if not self.waiting:
                    return
                work = self.waiting.popleft()
            if work.job.cancelled.is_set():
                work.job.choice_done(work.choice, None)
                continue
            try:
                seq = self.batch.add(work.prompt, work.config)    # prefill: the first token
            except Exception as e:      # noqa: BLE001 - this request fails; the batch goes on
                if isinstance(e, USER_ERRORS):
                    work.job.fail(str(e), 400 if isinstance(e, PromptError) else 500)
                else:
                    traceback.print_exc()
                    work.job.fail("the server failed to start this answer", 500)
                work.job.choice_done(work.choice, None)
                continue
            self.running[seq] = work
            self._emit(seq, seq.tokens[0])

    def _drop_cancelled(self) -> None:
        for seq, work in list(self.running.items()):
            if work.job.cancelled.is_set():
                self.batch.cancel(seq)
                del self.running[seq]
                work.job.choice_done(work.choice, seq)

    def _emit(self, seq, token) -> None:
        """A sequence's new token to its request (token None: it failed, seq.error says why)."""
        work = self.running.get(seq)
        if work is None:            # not a sequence of this worker's requests: nobody to tell
            return
        if token is None:
            if seq.error_status >= 500:
                traceback.print_exception(seq.failure)
            work.job.fail(seq.error, seq.error_status)
        else:
            work.job.put("token", work.choice, token)
        if seq.done:
            del self.running[seq]
            work.job.choice_done(work.choice, seq)
