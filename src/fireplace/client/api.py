"""`Fireplace`: the one client of the public REST API (what the CLI, the web console's tests and
the benchmarks call). Every call returns the API's JSON unchanged (dicts with lowerCamelCase
keys), so what a caller prints is exactly what the server said.

    fp = Fireplace("http://localhost:8000", api_key="fw_...")      # account: the key's own
    fp.models.get("my-model")                      # an ID in fp.account_id ...
    fp.models.get("accounts/fireplace/models/x")   # ... or a full name, any account
    for ds in fp.datasets.iter(filter='state="READY"'): ...
    fp.chat.stream("accounts/fireplace/models/x", [{"role": "user", "content": "hi"}])
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

from fireplace.client.inference import Inference
from fireplace.client.resources import (Accounts, ApiKeys, DeployedModels, Deployments, Datasets, Models,
                                        Quotas, SftJobs, Users)
from fireplace.client.transport import DEFAULT_TIMEOUT, Transport
from fireplace.errors import InvalidArgument

DEFAULT_BASE_URL = "http://localhost:8000"
Resource = dict[str, Any]


class Fireplace:
    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None,
                 account_id: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, max_retries: int = 3,
                 sleep: Callable[[float], None] | None = None):
        extra = {"sleep": sleep} if sleep else {}
        self.transport = Transport(base_url, api_key, timeout=timeout, max_retries=max_retries, **extra)
        self.base_url = self.transport.base_url
        self._account_id = account_id.removeprefix("accounts/") if account_id else None
        self.accounts = Accounts(self)
        self.users = Users(self)
        self.api_keys = ApiKeys(self)
        self.models = Models(self)
        self.datasets = Datasets(self)
        self.deployments = Deployments(self)
        self.deployed_models = DeployedModels(self)
        self.sft_jobs = SftJobs(self)
        self.quotas = Quotas(self)
        self.inference = Inference(self)

    def __enter__(self) -> "Fireplace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # ---- the account every ID is resolved in -------------------------------------------------

    @property
    def account_id(self) -> str:
        """The account given, else the key's own: the only account `GET /v1/accounts` lists
        (a platform admin sees many and must name one)."""
        if self._account_id is None:
            page = self.get("/v1/accounts", params={"pageSize": 2})
            accounts = page.get("accounts", [])
            if len(accounts) != 1:
                raise InvalidArgument("this API key can act in several accounts: name one "
                                      "(--account / FIREPLACE_ACCOUNT)")
            self._account_id = accounts[0]["name"].removeprefix("accounts/")
        return self._account_id

    def name(self, collection: str, ref: str) -> str:
        """'accounts/a/<collection>/x' stays as it is; a bare 'x' is put in the current account."""
        if ref.startswith("accounts/"):
            parts = ref.split("/")
            if len(parts) != 4 or parts[2] != collection or not parts[1] or not parts[3]:
                raise InvalidArgument(f"{ref!r} is not a {collection} name (accounts/<account>/{collection}/<id>)")
            return ref
        if not ref or "/" in ref:
            raise InvalidArgument(f"{ref!r} is neither an ID nor a full name accounts/<account>/{collection}/<id>")
        return f"accounts/{self.account_id}/{collection}/{ref}"

    def path(self, collection: str, ref: str, verb: str = "") -> str:
        return "/v1/" + quote(self.name(collection, ref), safe="/") + verb

    def collection_path(self, collection: str, account: str | None = None) -> str:
        return f"/v1/accounts/{account or self.account_id}/{collection}"

    # ---- verbs --------------------------------------------------------------------------------

    def get(self, path: str, params: dict | None = None) -> Any:
        return self.transport.json("GET", path, params=_clean(params))

    def post(self, path: str, body: Any = None, params: dict | None = None) -> Any:
        return self.transport.json("POST", path, json=body if body is not None else {}, params=_clean(params))

    def patch(self, path: str, body: Any, params: dict | None = None) -> Any:
        return self.transport.json("PATCH", path, json=body, params=_clean(params))

    def delete(self, path: str, params: dict | None = None) -> Any:
        return self.transport.json("DELETE", path, params=_clean(params))

    def list_page(self, path: str, *, filter: str | None = None, order_by: str | None = None,
                  page_size: int | None = None, page_token: str | None = None, **params: Any) -> dict:
        """One page as the API answers it: {<items>: [...], nextPageToken, totalSize}."""
        return self.get(path, params={"filter": filter, "orderBy": order_by, "pageSize": page_size,
                                      "pageToken": page_token, **params})

    def iter_list(self, path: str, key: str, **query: Any) -> Iterator[Resource]:
        """Every item of every page, following nextPageToken."""
        token = query.pop("page_token", None)
        while True:
            page = self.list_page(path, page_token=token, **query)
            yield from page.get(key, [])
            token = page.get("nextPageToken")
            if not token:
                return


def _clean(params: dict | None) -> dict | None:
    """Drop unset query parameters; booleans as the API spells them."""
    if not params:
        return None
    return {k: ("true" if v is True else "false" if v is False else v) for k, v in params.items()
            if v is not None and v != ""}
