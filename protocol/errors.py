"""One typed error hierarchy; the frontend maps `code` to HTTP in one table (frontend/errors.py)."""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error the mesh raises on purpose; `code` travels on the bus."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param  # JSON path of the offending field, e.g. "$.size"
        self.retry_after = retry_after  # seconds, for overload answers


class InvalidRequest(MeshError, ValueError):
    code = "invalid_request"


class ModelNotFound(MeshError, LookupError):
    code = "model_not_found"


class NotFound(MeshError, LookupError):
    code = "not_found"


class PayloadTooLarge(MeshError, ValueError):
    code = "payload_too_large"


class Unauthorized(MeshError, PermissionError):
    code = "unauthorized"


class Overloaded(MeshError):
    code = "overloaded"


class WorkerUnavailable(MeshError, ConnectionError):
    """No worker answered the request (no responders, or none registered)."""

    code = "worker_unavailable"


class WorkerLost(MeshError, ConnectionError):
    """The worker serving a request vanished (heartbeat lapsed, goodbye, reply gap)."""

    code = "worker_lost"


class DeadlineExceeded(MeshError, TimeoutError):
    code = "deadline_exceeded"


class Cancelled(MeshError):
    code = "cancelled"


class ShuttingDown(MeshError):
    """This frontend is stopping: its requests end here (not migrated; the client retries elsewhere)."""

    code = "shutting_down"


class EngineError(MeshError, RuntimeError):
    code = "engine_error"


ERRORS_BY_CODE: dict[str, type[MeshError]] = {
    cls.code: cls
    for cls in (
        MeshError,
        InvalidRequest,
        ModelNotFound,
        NotFound,
        PayloadTooLarge,
        Unauthorized,
        Overloaded,
        WorkerUnavailable,
        WorkerLost,
        DeadlineExceeded,
        Cancelled,
        ShuttingDown,
        EngineError,
    )
}


def error_from_code(code: str, message: str, *, param: str | None = None, retry_after: float | None = None) -> MeshError:
    """Rebuild the typed error that a bus `Error` reply names (unknown codes become MeshError)."""
    cls = ERRORS_BY_CODE.get(code, MeshError)
    return cls(message, param=param, retry_after=retry_after)
