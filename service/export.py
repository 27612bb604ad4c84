"""`GET /export` and `mend export-edits`: the active edits of one log version as files other tools load.

In place, a PEFT LoRA adapter of the edits' summed deltas, or a merged safetensors checkpoint. Scoped, one adapter
per edit and the keys that select it (EditMethod.export). Beside them, manifest.json says which version, which
edits and which files.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from .runtime import Runtime, now
from .schemas import EXPORT_FORMATS

MANIFEST = "manifest.json"
FORMAT, FORMAT_VERSION = "mend-edits-export", "1"


def export_edits(rt: Runtime, fmt: str, out: Path) -> dict:
    """Write the edits active at the current version into the new folder `out` as `fmt`; returns the manifest.
    Written aside and renamed: a failed export leaves nothing at `out`."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: one of {', '.join(EXPORT_FORMATS)}")
    if out.exists():
        raise FileExistsError(f"{out} exists: export into a new folder")
    state = rt.active_edits()
    stamp = {"mend_version": str(state.version), "mend_method": rt.method.name, "mend_model_fingerprint": rt.model_fp}
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = rt.method.export(state.deltas, fmt, tmp, stamp)
        requests = {e.edit_id: e.body["requests"] for e in state.entries}
        for row in files.get("adapters", []):  # a scoped edit's key row i is its request i
            row.update(requests[row["edit_id"]][row["key_row"]])
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "export": fmt, "method": rt.method.name,
                    "version": state.version, "time": now(), "model": rt.settings.model, "model_fingerprint":
                    rt.model_fp, "editor_fingerprint": rt.editor_fp, "log": rt.log.key,
                    "edits": [{"edit_id": e.edit_id, "version": e.version, "requests": e.body["requests"],
                               "author": e.body["author"], "note": e.body["note"], "time": e.body["time"]}
                              for e in state.entries], **files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def export_zip(rt: Runtime, fmt: str) -> tuple[Path, dict]:
    """(zip file, manifest) of `export_edits`, the folder at the zip's top level; the zip lies alone in a new
    temporary folder, which the caller removes."""
    work = Path(tempfile.mkdtemp(prefix="mend-export-"))
    try:
        manifest = export_edits(rt, fmt, work / "export")
        folder = work / f"mend-edits-v{manifest['version']}-{fmt}"
        (work / "export").rename(folder)
        path = work / f"{folder.name}.zip"
        # Stored, not deflated: weights barely compress, and a merged checkpoint then zips at disk speed.
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(work).as_posix())
        shutil.rmtree(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return path, manifest
