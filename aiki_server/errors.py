"""Server errors. One root, `ApiError`, carrying an `ErrorCode`; the code → HTTP status mapping
lives here and nowhere else.

    ApiError(code, message)
    ├── raised by services for callers' mistakes (4xx) and lost claims (409 fenced)
    └── StoreUnavailable: the database could not be reached (503, retryable)
"""

from __future__ import annotations

from aiki_client.wire import ErrorCode

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.FENCED: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
}


class ApiError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code.value, "message": self.message}}


def invalid(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_REQUEST, message)


def not_found(message: str) -> ApiError:
    return ApiError(ErrorCode.NOT_FOUND, message)


def conflict(message: str) -> ApiError:
    return ApiError(ErrorCode.CONFLICT, message)


def fenced(message: str) -> ApiError:
    return ApiError(ErrorCode.FENCED, message)


def unavailable(message: str) -> ApiError:
    return ApiError(ErrorCode.UNAVAILABLE, message)


class StoreUnavailable(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message)
