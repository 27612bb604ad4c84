"""`mend rekey-log`: carry a scoped edit log over to a new scope (a refitted `scope.json`/`scope.safetensors`).

A scoped edit stores the key of its prompt, computed by the scope it was made under; a server with another scope
keys requests differently, so its log is another log (the scope's fingerprint is part of the log key) and the
old edits would silently stop applying. This copies every event of the old log, in order, into the new scope's
log: edits keep their id, body and low-rank factors and get their prompts' keys under the new scope; rollbacks
are copied as they are. The old log is left untouched. Run it with the servers of that log stopped.

An edit logged before edits carried the prompts they are keyed by (meta["prompts"]) gets them from its request
body, so the word check (`editor_core.scope.WordCheck`) selects it as it selects a new edit.
"""
from __future__ import annotations

from pathlib import Path

from editor_core import LowRankDelta, ScopedMeta

from .editlog import EDIT, EditLog, Event, log_fingerprint
from .embedded_redis import EmbeddedRedis
from .methods import load_scope, scoped_fingerprint
from .runtime import load_served
from .settings import Settings


def rekey_log(settings: Settings, old_scope: Path) -> tuple[str, str, int]:
    """Copy the log of `old_scope` (a folder with its scope files, beside the same editor) into the log of the
    scope in `settings.editor`. Returns (old log key, new log key, events copied). Refuses when the new log
    already holds events, when the old one holds none, or when the two scopes are the same."""
    embedded = None if settings.redis_url else EmbeddedRedis(settings.data_dir / "redis").start()
    try:
        model, tok, model_fp, editor = load_served(settings)
        new, old = load_scope(settings.editor, editor), load_scope(old_scope, editor)
        old_fp, new_fp = (scoped_fingerprint(editor.fingerprint(), s) for s in (old, new))
        url, new_log_fp = settings.redis_url or embedded.url, log_fingerprint(model_fp, new_fp)
        src, dst = EditLog(url, log_fingerprint(model_fp, old_fp)), EditLog(url, new_log_fp)
        if src.key == dst.key:
            raise ValueError(f"{old_scope} and {settings.editor} hold the same scope: nothing to re-key")
        events = src.read_after("0")
        if not events:
            raise ValueError(f"no events in {src.key}: is {old_scope} the scope the log was written with?")
        if dst.client.xlen(dst.key):
            raise ValueError(f"{dst.key} already holds events: re-keying into it would mix two histories")
        last = "0"
        for event in events:
            if (event.model_fp, event.editor_fp) != (model_fp, old_fp):
                raise ValueError(f"event {event.id} of {src.key} was written for another model or editor")
            delta = None
            if event.type == EDIT:
                old_delta = event.load_delta()
                prompts = [r["prompt"] for r in event.body["requests"]]
                if old_delta.key is None or len(old_delta.key) != len(prompts):
                    raise ValueError(f"event {event.id}: its key rows are not one per request, cannot re-key it")
                keys = new.prompt_keys(model, tok, prompts)
                meta = {**ScopedMeta(prompts=tuple(prompts)).written(), **old_delta.meta}  # a logged list wins
                delta = LowRankDelta(old_delta.factors, meta, keys).to_bytes()
            body = {**event.body, "rekeyed_from": {"log": src.key, "event": event.id}}
            last = dst.append(Event(event.type, model_fp, new_fp, new_log_fp, body, delta), after=last)
        src.close()
        dst.close()
        return src.key, dst.key, len(events)
    finally:
        if embedded:
            embedded.stop()
