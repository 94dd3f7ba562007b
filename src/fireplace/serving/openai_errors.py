"""The OpenAI error shape of the data plane: {"error": {"message", "type", "param", "code"}}.

Used by the gateway (through api/errors.py, for inference paths) and by the replica, so both
answer alike. The type names follow OpenAI's: invalid_request_error (400/404/413),
authentication_error (401), permission_error (403), rate_limit_error (429), server_error (5xx).
"""
from __future__ import annotations

from fastapi.responses import JSONResponse

TYPE_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                  404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
                  422: "invalid_request_error", 429: "rate_limit_error", 501: "invalid_request_error"}
CODE_BY_STATUS = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded",
                  503: "service_unavailable"}


def openai_error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPE_BY_STATUS.get(status, "server_error"),
                      "param": param, "code": code if code is not None else CODE_BY_STATUS.get(status)}}


def openai_error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                          headers: dict | None = None) -> JSONResponse:
    return JSONResponse(openai_error_body(status, message, param=param, code=code), status_code=status,
                        headers=headers)
