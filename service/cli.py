"""`mend`: the library's train/eval commands (editor_core.cli) plus `mend serve`."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import typer
import uvicorn
from pydantic import ValidationError

from .settings import Settings

try:
    from editor_core.cli import app
except ModuleNotFoundError as e:  # editor_core/cli.py is being written; only its absence is tolerated
    if e.name != "editor_core.cli":
        raise
    app = typer.Typer(help="MEND model editing")

    @app.callback()
    def main() -> None:
        """MEND model editing: serve an editor over HTTP."""  # a callback keeps `serve` a subcommand


@app.command()
def serve(host: str = typer.Option(None, help="default: MEND_HOST or 127.0.0.1"),
          port: int = typer.Option(None, help="default: MEND_PORT or 8000"),
          log_level: str = typer.Option("info")) -> None:
    """Start the HTTP service (model, editor and edit log from the MEND_* settings)."""
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        for err in e.errors():  # the messages only: pydantic's full report echoes every input value
            where = "".join(f"{part}: " for part in err["loc"])
            typer.echo(f"mend serve: {where}{err['msg']}", err=True)
        raise typer.Exit(2) from None
    from .main import create_app  # imports torch: only when serving

    # force: the library callback may already have configured the root logger at WARNING
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)


@app.command("import")
def import_file(file: Path = typer.Argument(..., help="JSON Lines of {prompt, target[, key]}, or a zsRE or "
                                                      "CounterFact JSON list", exists=True, dir_okay=False),
                url: str = typer.Option("http://127.0.0.1:8000", envvar="MEND_URL", help="the server"),
                api_key: str = typer.Option(None, envvar="MEND_API_KEY", help="its API key, if it has one"),
                batch: int = typer.Option(500, min=1, max=1000, help="items per request"),
                n: int = typer.Option(None, min=1, help="only the first n items"),
                author: str = typer.Option("import"), note: str = typer.Option(""),
                force: bool = typer.Option(False, help="import items the guard would refuse"),
                report: Path = typer.Option(None, help="write each item's outcome here (JSON Lines)"),
                progress: bool = typer.Option(True, help="a progress bar on stderr")) -> None:
    """Import a file of corrections into a running server (POST /edits/import), in batches. Each item is logged as
    its own edit, its delta computed at its first selection. Run it again after any failure: items that landed are
    reported as repeated, never written twice."""
    from collections import Counter

    from .client import MendClient, MendError
    from .importing import read_items, report_line, send

    try:
        items = read_items(file, n)
    except ValueError as e:
        typer.echo(f"mend import: {e}", err=True)
        raise typer.Exit(2) from None
    counts: Counter[str] = Counter()
    try:
        with MendClient(url, api_key) as mend, (report.open("w") if report else contextlib.nullcontext()) as out:
            for index, item in send(mend, items, batch, author, note, force, progress):
                counts[item.status] += 1
                if out is not None:
                    out.write(report_line(index, item) + "\n")
                elif item.status in ("refused", "invalid"):
                    typer.echo(f"item {index}: {item.status}: {item.error}", err=True)
    except MendError as e:
        typer.echo(f"mend import: {e.detail} (after {sum(counts.values())} items; run it again to go on)", err=True)
        raise typer.Exit(1) from None
    typer.echo(", ".join(f"{counts[s]} {s}" for s in ("imported", "repeated", "refused", "invalid")))
    if counts["refused"] or counts["invalid"]:
        raise typer.Exit(1)


@app.command("rekey-log")
def rekey_log(old_scope: Path = typer.Option(..., help="folder holding the scope the log was written with "
                                                       "(scope.json + scope.safetensors)")) -> None:
    """Copy a scoped edit log written under an old scope into the log of the scope beside MEND_EDITOR, each edit
    keyed again (servers of that log stopped; the old log is left as it is)."""
    from .rekey import rekey_log as rekey  # imports torch

    try:
        old, new, n = rekey(Settings(), old_scope)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"mend rekey-log: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"copied {n} events from {old} to {new}")


@app.command("export-edits")
def export_edits(out: Path = typer.Option(..., help="the folder to write (must not exist)"),
                 fmt: str = typer.Option("peft", "--format", help="peft: a PEFT LoRA adapter (scoped: one per edit, "
                                                                   "with their keys); merged: a merged checkpoint "
                                                                   "(in place only)")) -> None:
    """Write the edits active in the edit log (the MEND_* settings, as `mend serve` reads them) as a PEFT adapter
    or a merged safetensors checkpoint, with manifest.json. With the embedded Redis, stop the server first (or use
    GET /export)."""
    from .errors import ServiceError
    from .export import export_edits as export
    from .runtime import Runtime  # imports torch
    from .schemas import EXPORT_FORMATS

    if fmt not in EXPORT_FORMATS:
        typer.echo(f"mend export-edits: --format must be one of {', '.join(EXPORT_FORMATS)}", err=True)
        raise typer.Exit(2)
    if out.exists():
        typer.echo(f"mend export-edits: {out} exists: export into a new folder", err=True)
        raise typer.Exit(2)
    try:
        rt = Runtime.start(Settings(), follow=False)
    except (RuntimeError, FileNotFoundError, ServiceError) as e:  # Redis unreachable or in use, no editor, mismatch
        typer.echo(f"mend export-edits: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        manifest = export(rt, fmt, out)
    except ServiceError as e:  # scoped edits cannot be merged; no edit to export
        typer.echo(f"mend export-edits: {e.detail}", err=True)
        raise typer.Exit(2) from None
    finally:
        rt.close()
    typer.echo(f"exported {len(manifest['edits'])} active edits at version {manifest['version']} to {out}")


if __name__ == "__main__":
    app()
