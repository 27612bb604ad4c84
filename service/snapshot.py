"""Snapshots of a scoped replica's derived state, so that a restart (or a new replica on the same disk) reads one
folder and replays only the log's tail.

A snapshot is the state after one log event: the codebook's rows (keys, radii, relation keys, owners, targets,
word ends, rare words, each edit's definition), the edit table, the idempotency keys, the version and the event
id. It is derived state (ARCHITECTURE.md, invariant 7): deleting it changes no reply, only how long a start takes.
It is used only when its manifest names this log and this scope's checks and its event is still in the stream at
the version it records; anything else is refused with a warning and the log is replayed whole. Written to a new
folder and renamed into place, so a crash mid-write leaves the previous snapshot. Safetensors and JSON only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

FORMAT = "mend-snapshot-2"  # 2: edit entries hold their bodies as JSON text
TENSORS, STATE, MANIFEST = "rows.safetensors", "state.json", "manifest.json"


@dataclass
class Snapshot:
    version: int
    event_id: str
    tensors: dict[str, torch.Tensor]  # the codebook's (editor_core.scope.codebook_state)
    codebook: dict  # its JSON half
    replica: dict  # edits, idempotency keys, active ids


def folder_for(root: Path, log_key: str) -> Path:
    return root / "snapshots" / log_key.replace(":", "_")


def save(root: Path, log_key: str, checks: str, snap: Snapshot) -> Path:
    """Write `snap` as the snapshot of `log_key` under `root`, replacing the previous one whole."""
    final = folder_for(root, log_key)
    tmp = final.with_name(final.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(snap.tensors, tmp / TENSORS, metadata={"format": FORMAT})
    state = json.dumps({"codebook": snap.codebook, "replica": snap.replica}).encode()
    (tmp / STATE).write_bytes(state)
    manifest = {"format": FORMAT, "log": log_key, "checks": checks, "version": snap.version,
                "event_id": snap.event_id, "state_sha256": hashlib.sha256(state).hexdigest()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load(root: Path, log_key: str, checks: str) -> Snapshot | None:
    """The snapshot of `log_key` under `root` if there is one written for these checks and whole; else None."""
    folder = folder_for(root, log_key)
    if not (folder / MANIFEST).exists():
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if (manifest.get("format"), manifest.get("log"), manifest.get("checks")) != (FORMAT, log_key, checks):
            log.warning("ignoring the snapshot in %s: written for another log or scope (full replay)", folder)
            return None
        state = (folder / STATE).read_bytes()
        if hashlib.sha256(state).hexdigest() != manifest["state_sha256"]:
            log.warning("ignoring the snapshot in %s: its state does not match its manifest (full replay)", folder)
            return None
        parsed = json.loads(state)
        return Snapshot(manifest["version"], manifest["event_id"], load_file(folder / TENSORS), parsed["codebook"],
                        parsed["replica"])
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring the snapshot in %s: %s (full replay)", folder, e)
        return None
