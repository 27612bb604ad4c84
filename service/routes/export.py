from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ..deps import RuntimeDep
from ..errors import MergedScopedExport, NothingToExport
from ..export import export_zip
from ..schemas import ExportFormat

router = APIRouter(tags=["export"])


@router.get("/export", response_class=FileResponse, responses={
    200: {"content": {"application/zip": {}}, "description": "a zip of one folder: the adapter(s) or checkpoint and "
                                                              "manifest.json (the version, edits and files)"},
    409: {"description": f"{MergedScopedExport.message}; or: {NothingToExport.message}"}})
def export(runtime: RuntimeDep, fmt: Annotated[ExportFormat, Query(alias="format")] = "peft") -> FileResponse:
    """The edits active at the current version, as files PEFT or transformers load."""
    path, manifest = export_zip(runtime, fmt)
    return FileResponse(path, media_type="application/zip", filename=path.name,
                        headers={"X-Mend-Version": str(manifest["version"])},
                        background=BackgroundTask(shutil.rmtree, path.parent, ignore_errors=True))
