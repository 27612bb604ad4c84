"""Domain errors and the one handler that maps them to fixed HTTP statuses and messages."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ServiceError(Exception):
    status = 500
    message = "internal error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail or self.message


class Unauthorized(ServiceError):
    status, message = 401, "missing or invalid API key: send 'Authorization: Bearer <key>'"


class OpenWithoutKey(ServiceError):
    status, message = 403, ("refusing a request that came in on a non-loopback address: this server has no API key, "
                            "so anyone who can reach it could edit the model. Set MEND_API_KEY, bind a loopback "
                            "address, or set MEND_ALLOW_NO_KEY=true if something else keeps the port private")


class UnknownEdit(ServiceError):
    status, message = 404, "unknown edit_id"


class AlreadyRolledBack(ServiceError):
    status, message = 409, "edit is already rolled back"


class NothingToRollBack(ServiceError):
    status, message = 409, "no active edit after that version"


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


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return 400, "malformed JSON body"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return 422, f"{where}: {first.get('msg')}" if where else str(first.get("msg"))


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    # FastAPI's own validation errors come as a list; clients get one fixed sentence like every other error.
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail = _validation_detail(exc)
        return JSONResponse({"detail": detail, "errors": jsonable(exc.errors())}, status_code=status)

    # A bug must still answer in the API's shape, never Starlette's plain-text page. The exception is raised on
    # after the response, so the server logs it with its traceback.
    @app.exception_handler(Exception)
    async def internal_error(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": ServiceError.message}, status_code=500)


def jsonable(errors: list[dict]) -> list[dict]:
    # Pydantic puts the raised exception object into ctx; keep only what JSON can carry.
    return [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]
