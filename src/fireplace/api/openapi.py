"""What /openapi.json says beyond the routes: the one error body on every operation, no
FastAPI 422 (we answer 400 INVALID_ARGUMENT), and the API key security scheme."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from pydantic import BaseModel

ERROR_STATUSES = {
    "400": "INVALID_ARGUMENT (3), FAILED_PRECONDITION (9) or OUT_OF_RANGE (11)",
    "401": "UNAUTHENTICATED (16): missing, wrong, revoked or expired API key",
    "403": "PERMISSION_DENIED (7): the caller's role may not do this",
    "404": "NOT_FOUND (5): no such resource, or another account's private one",
    "409": "ALREADY_EXISTS (6) or ABORTED (10)",
    "413": "INVALID_ARGUMENT (3): body or file over its size limit",
    "429": "RESOURCE_EXHAUSTED (8): a quota or rate limit, named in the message",
    "500": "INTERNAL (13)",
    "501": "UNIMPLEMENTED (12): a Fireworks resource or field Fireplace does not serve",
    "503": "UNAVAILABLE (14)",
}


class ErrorBody(BaseModel):
    """grpc-gateway's error body, as Fireworks returns it (message at most 1,024 characters)."""
    code: int
    message: str
    details: list[dict] = []


def install_openapi(app: FastAPI) -> None:
    def build() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["ErrorBody"] = ErrorBody.model_json_schema()
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        }
        error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path, item in schema.get("paths", {}).items():
            public = path in ("/healthz", "/readyz") or path.startswith("/v1/uploads/") \
                or path.startswith("/v1/downloads/")
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                op["responses"].pop("422", None)
                for status, description in ERROR_STATUSES.items():
                    op["responses"].setdefault(status, {"description": description, "content": error_content})
                if not public:
                    op.setdefault("security", [{"bearer": []}, {"apiKey": []}])
        schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
        schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = build
