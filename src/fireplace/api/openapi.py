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


ID_PATTERN = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
# A path segment that takes an ID or the resource's full name (percent-encoded slashes).
REF_PATTERN = r"^(accounts/[a-z]([a-z0-9-]{0,61}[a-z0-9])?/[A-Za-z]+/)?[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
FILENAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
PARAM_PATTERNS = {"account_id": ID_PATTERN, "filename": FILENAME_PATTERN, "model_id": ID_PATTERN,
                  "userId": ID_PATTERN, "deploymentId": ID_PATTERN, "accountId": ID_PATTERN,
                  "supervisedFineTuningJobId": ID_PATTERN}


def _document_parameters(op: dict, path: str) -> None:
    """What the server checks on path and ID parameters, so the spec tells the truth: IDs
    (AIP-122), full-name-or-ID path segments, flat file names."""
    for param in op.get("parameters", []):
        schema = param.setdefault("schema", {})
        if schema.get("type") != "string" or "pattern" in schema:
            continue
        name = param.get("name", "")
        if name in PARAM_PATTERNS and not (name == "model_id" and path.startswith("/v1/accounts")):
            schema["pattern"] = PARAM_PATTERNS[name]
        elif param.get("in") == "path" and (name.endswith("_id") or name.endswith("_ref")):
            schema["pattern"] = REF_PATTERN if not path.startswith("/v1/uploads") and not \
                path.startswith("/v1/downloads") else ID_PATTERN


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
                _document_parameters(op, path)
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
