"""HTTP errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with a status.

The `openai` client turns these into its exception classes by status (BadRequestError for 400,
AuthenticationError 401, NotFoundError 404, ... InternalServerError 5xx) and shows `message`.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

# status -> OpenAI's error type for it
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class HTTPError(Exception):
    """Raised by the app's handlers; rendered by `error_response`."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.code, self.param)


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The JSON of an OpenAI error (also sent as a server-sent event when a stream fails)."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(exc: HTTPError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
