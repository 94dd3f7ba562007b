"""What /openapi.json says beyond the routes: the one error body on every operation, no
FastAPI 422 (we answer 400 INVALID_ARGUMENT), the API key security scheme, the patterns the
server checks on IDs and names, and links from each create to its resource (openapi_links)."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from pydantic import BaseModel

from fireplace.api.openapi_links import add_links

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
FILENAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
# Parameters whose checks live in the services (a new resource's ID in a create's query states
# its pattern in the route itself, and FastAPI checks it there).
PARAM_PATTERNS = {"account_id": ID_PATTERN, "filename": FILENAME_PATTERN, "model_id": ID_PATTERN}


def _convertor_patterns(app: FastAPI) -> dict[tuple[str, str], str]:
    """(path, parameter) -> the pattern its path convertor accepts (api/paths.py): an ID or the
    full name in the collection the segment follows ('.../models/{model_ref}' -> models)."""
    from fastapi.routing import iter_route_contexts   # routes of included routers too

    patterns = {}
    for route in iter_route_contexts(app.routes):
        for name, convertor in (getattr(route.original_route, "param_convertors", None) or {}).items():
            if hasattr(convertor, "openapi_pattern"):
                before = route.path_format.split("{" + name + "}", 1)[0].rstrip("/")
                patterns[(route.path_format, name)] = convertor.openapi_pattern(before.rsplit("/", 1)[-1])
    return patterns


def _document_parameters(op: dict, path: str, convertors: dict[tuple[str, str], str]) -> None:
    """What the server checks on path and ID parameters, so the spec tells the truth: IDs
    (AIP-122), full-name-or-ID path segments, flat file names."""
    for param in op.get("parameters", []):
        schema = _string_schema(param.setdefault("schema", {}))
        if schema is None or "pattern" in schema:
            continue
        name = param.get("name", "")
        if param.get("in") == "path" and (path, name) in convertors:
            schema["pattern"] = convertors[(path, name)]
        elif name in PARAM_PATTERNS and not (name == "model_id" and path.startswith("/v1/accounts")):
            schema["pattern"] = PARAM_PATTERNS[name]
        elif param.get("in") == "path" and name.endswith("_id"):   # signed-URL paths: bare IDs
            schema["pattern"] = ID_PATTERN


def _string_schema(schema: dict) -> dict | None:
    """The string schema of a parameter: itself, or the string branch of an optional one
    (`anyOf: [{type: string}, {type: null}]`, as FastAPI writes `str | None`)."""
    if schema.get("type") == "string":
        return schema
    strings = [s for s in schema.get("anyOf", []) if s.get("type") == "string"]
    return strings[0] if len(strings) == 1 else None


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
        convertors = _convertor_patterns(app)
        for path, item in schema.get("paths", {}).items():
            public = path in ("/healthz", "/readyz") or path.startswith("/v1/uploads/") \
                or path.startswith("/v1/downloads/")
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                _document_parameters(op, path, convertors)
                op["responses"].pop("422", None)
                for status, description in ERROR_STATUSES.items():
                    op["responses"].setdefault(status, {"description": description, "content": error_content})
                if not public:
                    op.setdefault("security", [{"bearer": []}, {"apiKey": []}])
        add_links(schema, set(convertors))
        schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
        schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = build
