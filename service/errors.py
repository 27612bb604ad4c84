"""Domain errors and the one handler that maps them to fixed HTTP statuses and messages."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

# The OpenAI-compatible routes' prefix: their errors take OpenAI's shape (see install_handlers).
OPENAI_PREFIX = "/v1"


class ServiceError(Exception):
    status = 500
    message = "internal error"
    param: str | None = None  # the request field at fault, and a machine-readable code: for OpenAI's error shape
    code: str | None = None

    def __init__(self, detail: str | None = None, param: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail or self.message
        self.param = param or self.param


class Unauthorized(ServiceError):
    status, message, code = 401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "invalid_api_key"


class OpenWithoutKey(ServiceError):
    status, message = 403, ("refusing a request that came in on a non-loopback address: this server has no API key, "
                            "so anyone who can reach it could edit the model. Set MEND_API_KEY, bind a loopback "
                            "address, or set MEND_ALLOW_NO_KEY=true if something else keeps the port private")


class UnknownEdit(ServiceError):
    status, message = 404, "unknown edit_id"


class UnknownModel(ServiceError):
    status, message = 404, "this model is not served here: GET /v1/models lists the one that is"
    param, code = "model", "model_not_found"


class AlreadyRolledBack(ServiceError):
    status, message = 409, "edit is already rolled back"


class NothingToRollBack(ServiceError):
    status, message = 409, "no active edit after that version"


class MergedScopedExport(ServiceError):
    status, message = 409, ("format=merged is refused with MEND_METHOD=scoped: a scoped edit applies only to prompts "
                            "whose key selects it, at a larger step than an in-place edit, and merged weights would "
                            "apply every edit to every prompt. Export format=peft instead: one adapter per edit, "
                            "with the keys and the manifest that say which prompts select it")


class ImportInPlace(ServiceError):
    status, message = 409, ("a bulk import logs edits whose deltas are computed at their first selection, which "
                            "only scoped edits (MEND_METHOD=scoped, the default) have; this server edits in place, "
                            "where every delta goes into the weights now: send the edits to /edit")


class NothingToExport(ServiceError):
    status, message = 409, ("no active edit to export as an adapter: it would change nothing (format=merged gives "
                            "the base model)")


class BadRequest(ServiceError):
    """Input that passes the schema but not the model's limits (token counts, chat template)."""

    status = 422


class EditRejected(ServiceError):
    status, message = 422, "edit rejected by the pre-commit guard"


class IdempotencyKeyReused(ServiceError):
    status, message = 422, "Idempotency-Key reused with a different request"


class LogUnavailable(ServiceError):
    """Only when nothing was sent to the log: a write that may have landed is LogOutcomeUnknown."""

    status, message = 503, "edit log (Redis) unavailable: nothing was applied, try again"


class LogOutcomeUnknown(ServiceError):
    status, message = 503, ("edit log (Redis) did not answer the write: it may or may not have been recorded. Retry "
                            "with the same Idempotency-Key to find out (without one a retry may apply it twice)")


class LogContention(ServiceError):
    status, message = 503, ("other replicas kept writing to the edit log while this request was computed on it: "
                            "nothing was applied, try again")


class NotReady(ServiceError):
    status, message = 503, "service is not ready"


class FingerprintMismatch(ServiceError):
    """A log event made for another base model or editor: never applied (raised at startup, not per request)."""

    status, message = 503, "edit log fingerprint does not match the loaded model and editor"


def _where(exc: RequestValidationError) -> str:
    return ".".join(str(p) for p in exc.errors()[0].get("loc", ()) if p != "body")


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return 400, "malformed JSON body"
    where = _where(exc)
    return 422, f"{where}: {first.get('msg')}" if where else str(first.get("msg"))


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                      "param": param, "code": code}}


def _is_openai(request: Request) -> bool:
    route = request.scope.get("route")  # the matched route's template: right behind a proxy's root_path too
    return route is not None and route.path.startswith(OPENAI_PREFIX + "/")


def _openai_response(status: int, message: str, param: str | None = None, code: str | None = None,
                     headers: dict | None = None) -> JSONResponse:
    # OpenAI answers invalid input with 400, where the rest of this API uses 422.
    return JSONResponse(openai_error(status, message, param, code), status_code=400 if status == 422 else status,
                        headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Errors are {"detail": ...}, but on the OpenAI-compatible routes, whose clients read OpenAI's shape:
    {"error": {"message", "type", "param", "code"}}."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if _is_openai(request):
            return _openai_response(exc.status, exc.detail, exc.param, exc.code, headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    # FastAPI's own validation errors come as a list; clients get one fixed sentence like every other error.
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail = _validation_detail(exc)
        if _is_openai(request):
            return _openai_response(status, detail, _where(exc) or None)
        return JSONResponse({"detail": detail, "errors": jsonable(exc.errors())}, status_code=status)

    # A bug must still answer in the API's shape, never Starlette's plain-text page. The exception is raised on
    # after the response, so the server logs it with its traceback.
    @app.exception_handler(Exception)
    async def internal_error(request: Request, _exc: Exception) -> JSONResponse:
        if _is_openai(request):
            return _openai_response(500, ServiceError.message)
        return JSONResponse({"detail": ServiceError.message}, status_code=500)


def jsonable(errors: list[dict]) -> list[dict]:
    # Pydantic puts the raised exception object into ctx; keep only what JSON can carry.
    return [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]
