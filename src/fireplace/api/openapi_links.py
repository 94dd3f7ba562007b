"""OpenAPI links from each create to what can be done with what it created (OpenAPI 3.1
"links"): `POST /v1/accounts/{a}/models` -> GET / PATCH / DELETE / the verbs and sub-paths of
`/v1/accounts/{a}/models/{model_ref}`, the new resource's `name` filling the item segment
(every item segment takes a full name, api/paths.py) and the create's own path parameters the
rest. Clients and tools that follow links (schemathesis' stateful phase) then reach real
resources instead of invented IDs.

    {"links": {"get_model_...": {"operationId": "get_model_...",
                                 "parameters": {"model_ref": "$response.body#/name",
                                                "account_id": "$request.path.account_id"}}}}
"""
from __future__ import annotations

import re

_PARAM = re.compile(r"\{([^}]+)\}")


def _item_param(create_path: str, path: str) -> str | None:
    """The item parameter of `path` directly under the collection `create_path`, or None:
    '/c' and '/c/{x}', '/c/{x}:verb', '/c/{x}/sub' -> 'x'."""
    if not path.startswith(create_path + "/{"):
        return None
    rest = path[len(create_path) + 2:]
    name, _, after = rest.partition("}")
    if "{" in after:
        return None
    return name


def add_links(schema: dict, name_segments: set[tuple[str, str]]) -> None:
    """name_segments: (path, parameter) pairs whose segment accepts a full resource name."""
    paths = schema.get("paths", {})
    for create_path, create_item in paths.items():
        create = create_item.get("post")
        if not isinstance(create, dict) or "200" not in create.get("responses", {}):
            continue
        own = set(_PARAM.findall(create_path))
        links = {}
        for path, item in paths.items():
            param = _item_param(create_path, path)
            if param is None or (path, param) not in name_segments:
                continue
            for method, op in item.items():
                if not isinstance(op, dict) or "operationId" not in op:
                    continue
                parameters = {param: "$response.body#/name"}
                parameters.update({p: f"$request.path.{p}" for p in _PARAM.findall(path) if p in own})
                links[op["operationId"]] = {"operationId": op["operationId"], "parameters": parameters}
        if links:
            create["responses"]["200"]["links"] = links
