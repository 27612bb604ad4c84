"""One decode thread per server: concurrent generations decoded together (continuous batching, editor_core.batching).

A request submits its checked Generation and reads its text from a queue, streamed or not alike. At every step the
thread lets waiting requests join, up to MEND_MAX_BATCH rows, then decodes one token for all rows; a row leaves
when it is done or its client has gone.

Versions. Scoped (the weights never change): a request reads the published version and its codebook view when it
joins, selects its edit there and keeps both to its end, so rows of one batch may be on different versions, each
on one whole version. In place: rows share the weights, so the thread holds the read lock while rows run; once a
writer waits, no request joins until the batch has drained and the lock is let go, so a batch never straddles
two versions and a stream of requests never starves an edit.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor_core import Batch, Completion, Row, Worded

from .errors import NotReady
from .locks import RWLock
from .methods import EditMethod
from .replica import Published

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """A generation request checked against the model's limits, and what running it reported."""

    ids: list[int]  # the prompt's tokens
    text: str  # what a scoped edit is selected by
    form: str  # PLAIN or CHAT
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    version: int | None = None  # the version it runs on, set when it starts
    worded: Worded | None = None  # what the method computed for its wording before it was submitted
    completion: Completion | None = None  # set when a stream ends


class Ticket:
    """One submitted generation: its text arrives in pieces, then its Completion (or the error that ended it)."""

    def __init__(self, g: Generation) -> None:
        self.g = g
        self.row: Row | None = None  # set when it joins
        self.cancelled = False
        self._out: queue.SimpleQueue = queue.SimpleQueue()
        self._joined = threading.Event()

    def joined(self) -> None:
        """Wait until it has joined a batch (`g.version` is then set); raises what failed it before that."""
        self._joined.wait()
        if self.row is None:
            for _ in self.pieces():  # only the error is left in the queue
                pass

    def pieces(self) -> Iterator[str]:
        """The text as it is made; `g.completion` is set after the last piece."""
        while True:
            item = self._out.get()
            if isinstance(item, str):
                yield item
            elif isinstance(item, Completion):
                self.g.completion = item
                return
            else:
                raise item

    def cancel(self) -> None:
        """Nobody reads any more: the row leaves the batch at the next step (or never joins)."""
        self.cancelled = True
        if self.row is not None:
            self.row.cancelled = True

    def _send(self) -> None:
        for piece in self.row.take():
            self._out.put(piece)
        if self.row.done is not None:
            self._out.put(self.row.done)

    def _fail(self, error: BaseException) -> None:
        self._out.put(error)
        self._joined.set()


class Batcher:
    """`published()` gives the state a joining row reads (one whole version); `pin_threads` sets the decode thread's
    torch threads as the server's."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, method: EditMethod, rw: RWLock,
                 published: Callable[[], Published], pin_threads: Callable[[], None], max_rows: int) -> None:
        self.model, self.tokenizer, self.method, self.rw = model, tokenizer, method, rw
        self.published, self.pin_threads, self.max_rows = published, pin_threads, max_rows
        self._waiting: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._batch = self._new_batch()
        self._version = contextlib.ExitStack()  # in place: the read lock, while rows run
        self._thread = threading.Thread(target=self._run, name="mend-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(60)

    def submit(self, g: Generation) -> Ticket:
        ticket = Ticket(g)
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise NotReady("service is not ready: it is shutting down")
            self._waiting.append(ticket)
            self._cond.notify()
        return ticket

    # ---- the decode thread ---------------------------------------------------------------------------------

    def _new_batch(self) -> Batch:
        return Batch(self.model, self.tokenizer, self.method.scope)

    def _run(self) -> None:
        self.pin_threads()
        try:
            while self._work():
                try:
                    self._admit()
                    self._step()
                except Exception as e:  # a bug: what ran fails, and the thread goes on serving the rest
                    log.exception("the decode loop failed: its %d generations fail", len(self._running))
                    for t in self._running:
                        t._fail(e)
                    self._running.clear()
                    self._batch = self._new_batch()
                    self._leave_version()
        finally:
            self._version.close()
            gone = NotReady("service is not ready: it is shutting down")
            with self._cond:
                for t in [*self._waiting, *self._running]:
                    t._fail(gone)
                self._waiting.clear()
                self._running.clear()

    def _work(self) -> bool:
        """Wait until there are rows to decode or requests to admit; False once the server stops."""
        with self._cond:
            while not self._stopping and not self._waiting and not self._batch.rows:
                self._version.close()  # idle: an in-place edit may apply
                self._cond.wait()
            return not self._stopping

    def _admit(self) -> None:
        room = self._batch.room(self.max_rows)
        if not room or not self._waiting or not self._enter_version():
            return
        with self._cond:
            joining = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        joining = [t for t in joining if not t.cancelled]
        state = self.published()  # one whole version: under the read lock in place, one read when scoped
        for t in joining:
            g = t.g
            g.version = state.version
            t.row = Row(g.ids, g.max_new_tokens, g.temperature, g.top_p, g.seed, g.stop,
                        self.method.ask(g.text, g.form, state.view, g.worded))
            t.row.cancelled = t.cancelled  # a cancel that came while the row was being made
            t._joined.set()
        try:
            self._batch.join([t.row for t in joining])  # one prefill, which selects their edits; the batch waits
        except Exception as e:
            log.exception("the prefill of %d generations failed", len(joining))
            for t in joining:
                t.row.cancelled = True  # one merged before the failure leaves at the next step
                t._fail(e)
            return
        for t in joining:
            t._send()
            if t.row.done is None:
                self._running.append(t)

    def _enter_version(self) -> bool:
        """In place: hold the read lock for the rows that join; none join while a writer waits for it."""
        if self.method.weights_fixed:
            return True
        if self._batch.rows:  # the lock is held: the batch drains first if a writer waits
            return not self.rw.writer_waiting()
        self._version.close()
        self._version.enter_context(self.rw.read())  # behind a waiting writer, which then applies first
        return True

    def _step(self) -> None:
        if not self._batch.rows:
            self._leave_version()
            return
        try:
            self._batch.step()
        except Exception as e:
            log.exception("a decoding step failed: its %d generations fail", len(self._running))
            for t in self._running:
                t._fail(e)
            self._running.clear()
            self._batch = self._new_batch()  # its cache may be half updated
            self._leave_version()
            return
        for t in self._running:
            t._send()
        self._running = [t for t in self._running if t.row.done is None and not t.row.cancelled]
        self._leave_version()

    def _leave_version(self) -> None:
        if not self._batch.rows:
            self._version.close()
