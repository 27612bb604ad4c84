"""Server-sent events made by a blocking iterator (a generation) in one worker thread."""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Generator

import anyio
import anyio.from_thread
import anyio.to_thread
from sse_starlette import EventSourceResponse

log = logging.getLogger(__name__)

# For the OpenAPI description of a route that streams when asked to.
STREAMS = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                 "description": "with `stream: true`: server-sent events, `data: <json>` each"}}


def event_stream(events: Generator[str, None, None], error_event: str) -> EventSourceResponse:
    """`events` (each the data of one event) as a server-sent event response.

    The generator runs whole in one worker thread, off the event loop: it waits on its generation's queue
    (service/batcher.py), whose decode thread never waits for it. It is not paced by the client either (the buffer
    takes every event; a generation yields at most max_new_tokens), so a slow reader holds back neither the batch
    nor an in-place edit waiting for it to drain. When the response stops reading (the client left, the server
    stops), the worker's next event fails and it closes the generator, which takes the generation out of the
    batch. An error once the 200 is sent can only be told in the stream: it is logged and the stream ends with
    `error_event`."""
    send, receive = anyio.create_memory_object_stream[str](math.inf)

    def run() -> None:
        with contextlib.closing(events):
            try:
                for event in events:
                    anyio.from_thread.run_sync(send.send_nowait, event)
            except anyio.BrokenResourceError:  # nobody reads any more
                return
            except Exception:
                log.exception("a streamed response failed")
                with contextlib.suppress(anyio.BrokenResourceError):
                    anyio.from_thread.run_sync(send.send_nowait, error_event)

    async def produce() -> None:
        async with send:
            await anyio.to_thread.run_sync(run)

    async def relay() -> AsyncIterator[str]:
        with receive:  # closed however the response stops reading: the worker stops at its next event
            async for event in receive:
                yield event

    return EventSourceResponse(relay(), data_sender_callable=produce)
