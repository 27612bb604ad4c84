"""A typed Python client of the service's HTTP API, on httpx, with the request and response models of schemas.py.

    from service.client import MendClient
    with MendClient("http://127.0.0.1:8000", api_key=None) as mend:
        e = mend.edit("The Eiffel Tower is located in the city of", "Rome", author="alice")
        print(mend.generate("The Eiffel Tower is located in the city of", max_new_tokens=8).text)
        mend.rollback(e.edit_id)

Arguments left as None take the server's defaults. Requests are built with the server's own schemas, so arguments
they refuse raise pydantic's ValidationError before anything is sent; what the server refuses raises MendError
(its status and `detail`). Every call is safe to repeat, so a dropped connection, a timeout and a 503 (which says
"try again") are retried with backoff: /edit and /rollback carry an Idempotency-Key made once per call and sent
with every try, and the server answers a repeated key with the first outcome, so a retry never applies an edit
twice. Importing this module imports no torch: it needs httpx, httpx-sse and pydantic only.
"""
from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, connect_sse
from pydantic import BaseModel, ValidationError

from .schemas import (
    EditCreate,
    EditImport,
    EditItem,
    EditPreview,
    EditPublic,
    EditRecord,
    EditsPage,
    GenerateChunk,
    GeneratePublic,
    GenerateRequest,
    Health,
    ImportItem,
    ImportPublic,
    Message,
    Ready,
    RollbackPublic,
    RollbackRequest,
    ScorePublic,
    ScoreRequest,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# What a retry may cure: the server gone for a moment (restarting, overloaded), or its answer lost on the way.
TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class MendError(Exception):
    """The service answered with an error status, and `detail` is its message; or it did not answer (status None)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail if status is None else f"{status}: {detail}")
        self.status, self.detail = status, detail


class NoAnswer(MendError):
    """No answer came (refused, reset, timed out), after the retries; the httpx error is its cause."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, detail)


class AuthError(MendError):
    """401: missing or wrong API key; 403: a server without a key refusing a non-loopback connection."""


class NotFound(MendError):
    """404: unknown edit_id (or a route this server does not have)."""


class Conflict(MendError):
    """409: the edit is already rolled back, no active edit is after that version, or a merged export of scoped
    edits."""


class Rejected(MendError):
    """400 or 422: over a token limit, refused by the edit guard, an Idempotency-Key reused for another request."""


class Unavailable(MendError):
    """503: the edit log (Redis) or the server is not available; retried before it is raised."""


ERRORS: dict[int, type[MendError]] = {400: Rejected, 401: AuthError, 403: AuthError, 404: NotFound, 409: Conflict,
                                      422: Rejected, 503: Unavailable}


def error_of(r: httpx.Response) -> MendError:
    """The error a response reports: its `detail`, or its text when it is not the service's JSON (a proxy's page)."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str):
        detail = r.text[:500] or r.reason_phrase
    return ERRORS.get(r.status_code, MendError)(r.status_code, detail)


def body_of(cls: type[BaseModel], **fields: object) -> dict:
    """The JSON body of `cls` with the fields given (None: not given, the server's default)."""
    return cls(**{k: v for k, v in fields.items() if v is not None}).model_dump(mode="json", exclude_unset=True)


class MendClient:
    """The service at `base_url`: typed methods for every route but the OpenAI-compatible /v1 (use openai's client
    there). `retries` more tries after the first, `backoff` seconds before the first retry, doubling."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float | httpx.Timeout = 120.0, retries: int = 3, backoff: float = 0.5) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else None
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.retries, self.backoff = retries, backoff

    def __enter__(self) -> MendClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ---- edits ----------------------------------------------------------------------------------------------

    def edit(self, prompt: str | None = None, target: str | None = None, *,
             messages: Sequence[Message | dict] | None = None, author: str | None = None, note: str | None = None,
             force: bool = False, idempotency_key: str | None = None) -> EditPublic:
        """One edit: `prompt` and `target`, or chat `messages` (the target a final assistant message, or `target`).
        A key of your own makes a retry in a later process find this call's outcome too."""
        body = body_of(EditCreate, prompt=prompt, target=target, messages=messages, author=author, note=note,
                       force=force)
        return EditPublic.model_validate(self._write("/edit", body, idempotency_key))

    def edit_batch(self, edits: Sequence[EditItem | dict], *, author: str | None = None, note: str | None = None,
                   force: bool = False, idempotency_key: str | None = None) -> EditPublic:
        """Several edits as one update: one log event, one edit_id, rolled back together."""
        body = body_of(EditCreate, edits=edits, author=author, note=note, force=force)
        return EditPublic.model_validate(self._write("/edit", body, idempotency_key))

    def import_edits(self, items: Sequence[ImportItem | dict], *, author: str | None = None,
                     note: str | None = None, force: bool = False) -> ImportPublic:
        """Many edits, each logged on its own with its delta computed at its first selection (at most MAX_IMPORT a
        call). Safe to retry: each item is idempotent by its key (default: made of its prompt and target)."""
        body = body_of(EditImport, items=items, author=author, note=note, force=force)
        return ImportPublic.model_validate(self._request("POST", "/edits/import", json=body).json())

    def dry_run(self, prompt: str | None = None, target: str | None = None, *,
                messages: Sequence[Message | dict] | None = None, edits: Sequence[EditItem | dict] | None = None,
                probes: Sequence[EditItem | dict] | None = None) -> EditPreview:
        """What an edit (or a batch) would do, and the same scores for `probes`; nothing is written or applied."""
        body = body_of(EditCreate, prompt=prompt, target=target, messages=messages, edits=edits, probes=probes,
                       dry_run=True)
        return EditPreview.model_validate(self._request("POST", "/edit", json=body).json())

    def rollback(self, edit_id: str | None = None, *, to_version: int | None = None, author: str | None = None,
                 note: str | None = None, idempotency_key: str | None = None) -> RollbackPublic:
        """Roll back one edit, or every active edit made after `to_version` (0: back to the base model)."""
        body = body_of(RollbackRequest, edit_id=edit_id, to_version=to_version, author=author, note=note)
        return RollbackPublic.model_validate(self._write("/rollback", body, idempotency_key))

    def list_edits(self, status: Literal["active", "rolled_back"] | None = None, offset: int = 0,
                   limit: int = 50, author: str | None = None,
                   order: Literal["oldest", "newest"] = "oldest") -> EditsPage:
        params = {"offset": offset, "limit": limit, "order": order,
                  **({"status": status} if status else {}), **({"author": author} if author else {})}
        return EditsPage.model_validate(self._request("GET", "/edits", params=params).json())

    def get_edit(self, edit_id: str) -> EditRecord:
        return EditRecord.model_validate(self._request("GET", f"/edits/{quote(edit_id, safe='')}").json())

    # ---- the model ------------------------------------------------------------------------------------------

    def generate(self, prompt: str | None = None, *, messages: Sequence[Message | dict] | None = None,
                 max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                 seed: int | None = None, stop: Sequence[str] | None = None) -> GeneratePublic:
        """The reply to a raw `prompt`, or to chat `messages`; temperature 0 (the default) is greedy."""
        body = body_of(GenerateRequest, prompt=prompt, messages=messages, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, seed=seed, stop=stop)
        return GeneratePublic.model_validate(self._request("POST", "/generate", json=body).json())

    def generate_stream(self, prompt: str | None = None, *, messages: Sequence[Message | dict] | None = None,
                        max_new_tokens: int | None = None, temperature: float | None = None,
                        top_p: float | None = None, seed: int | None = None,
                        stop: Sequence[str] | None = None) -> Iterator[GenerateChunk | GeneratePublic]:
        """`generate` as it is made: GenerateChunk pieces, then the GeneratePublic with the counts, finish_reason
        and version (its `text` empty), so `"".join(c.text for c in ...)` is the reply. A generator: the request
        goes out at the first `next`. Only opening the stream is retried; a stream cut off raises NoAnswer."""
        body = body_of(GenerateRequest, prompt=prompt, messages=messages, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, seed=seed, stop=stop, stream=True)
        with contextlib.ExitStack() as stack:
            source = self._retrying(lambda: self._open_events(stack, "/generate", body))
            with self._answered():
                for sse in source.iter_sse():
                    event = sse.json()
                    if "detail" in event:  # the generation failed after the 200 was sent
                        raise MendError(500, event["detail"])
                    if "finish_reason" in event:
                        yield GeneratePublic.model_validate(event)
                        return
                    yield GenerateChunk.model_validate(event)
        raise NoAnswer("the stream ended before its last event")

    def score(self, items: Sequence[EditItem | dict]) -> ScorePublic:
        """Teacher-forced scores of (prompt, target) pairs on the served model; nothing is edited."""
        body = body_of(ScoreRequest, items=items)
        return ScorePublic.model_validate(self._request("POST", "/score", json=body).json())

    def export(self, path: str | Path, format: Literal["peft", "merged"] = "peft") -> Path:
        """Download the edited model (GET /export, a zip) to `path`: written whole or not at all. `merged` on a
        scoped server raises Conflict (409): scoped edits are not weights that can be merged."""
        path = Path(path)
        part = path.with_name(path.name + ".part")

        def once() -> None:
            with self._answered(), self.http.stream("GET", "/export", params={"format": format}) as r:
                if r.is_error:
                    r.read()
                    raise error_of(r)
                with part.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)

        try:
            self._retrying(once)
            part.replace(path)
        finally:
            part.unlink(missing_ok=True)
        return path

    # ---- the server -----------------------------------------------------------------------------------------

    def health(self) -> Health:
        return Health.model_validate(self._request("GET", "/health").json())

    def ready(self) -> Ready:
        """Readiness, `ready` false when the server says 503 with its reasons: an answer, so it is not retried."""
        r = self._request("GET", "/ready", answers=(503,))
        try:
            return Ready.model_validate_json(r.content)
        except ValidationError:
            if r.status_code == 503:  # starting or stopping: no runtime to report on, only a detail
                raise error_of(r) from None
            raise

    def metrics(self) -> str:
        """The Prometheus text of /metrics."""
        return self._request("GET", "/metrics").text

    # ---- HTTP -----------------------------------------------------------------------------------------------

    def _write(self, path: str, body: dict, key: str | None) -> dict:
        # One key for every try of this call: a retry of a write that landed is answered with its outcome.
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        return self._request("POST", path, json=body, headers=headers).json()

    def _request(self, method: str, path: str, *, json: dict | None = None, params: dict | None = None,
                 headers: dict | None = None, answers: tuple[int, ...] = ()) -> httpx.Response:
        """The response, retried; an error status raises MendError unless it is one of `answers`."""
        def once() -> httpx.Response:
            with self._answered():
                r = self.http.request(method, path, json=json, params=params, headers=headers)
            if r.is_error and r.status_code not in answers:
                raise error_of(r)
            return r

        return self._retrying(once)

    def _open_events(self, stack: contextlib.ExitStack, path: str, body: dict) -> EventSource:
        """POST `body` for server-sent events: the open stream (closed with `stack`), or the error it answered."""
        with contextlib.ExitStack() as attempt, self._answered():
            source = attempt.enter_context(connect_sse(self.http, "POST", path, json=body))
            if source.response.is_error:
                source.response.read()
                raise error_of(source.response)
            stack.enter_context(attempt.pop_all())
            return source

    @contextlib.contextmanager
    def _answered(self) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as e:
            raise NoAnswer(f"no answer from {self.http.base_url}: {type(e).__name__} {e}".rstrip()) from e

    def _retrying(self, once: Callable[[], T]) -> T:
        for n in range(self.retries):
            try:
                return once()
            except (NoAnswer, Unavailable) as e:
                if not (isinstance(e, Unavailable) or isinstance(e.__cause__, TRANSIENT)):
                    raise
                wait = self.backoff * 2 ** n
                log.warning("%s; try %d of %d in %.1f s", e, n + 2, self.retries + 1, wait)
                time.sleep(wait)
        return once()
