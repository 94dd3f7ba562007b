"""Typed calls, one class per resource of the control plane (paths and bodies as in the
official fireworks-ai SDK; our extensions: accounts create, renaming accounts, API keys and SFT
jobs, quotas, usage, job metrics).

`ref` arguments take an ID (in the client's account) or a full name. Calls return the API's
JSON as it came (a dict); list calls return one page, `iter` every item of every page.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fireplace.client.api import Fireplace

Resource = dict[str, Any]


def _set(**fields: Any) -> dict:
    """The fields that were given (None means 'not given'), as the API spells them."""
    return {k: v for k, v in fields.items() if v is not None}


class _Collection:
    collection = ""     # path segment under accounts/{a}/
    items_key = ""      # key of the list in a list response

    def __init__(self, fp: "Fireplace"):
        self.fp = fp

    def name(self, ref: str) -> str:
        return self.fp.name(self.collection, ref)

    def _path(self, ref: str, verb: str = "") -> str:
        return self.fp.path(self.collection, ref, verb)

    def _collection(self, account: str | None = None) -> str:
        return self.fp.collection_path(self.collection, account)

    def get(self, ref: str) -> Resource:
        return self.fp.get(self._path(ref))

    def list(self, *, filter: str | None = None, order_by: str | None = None, page_size: int | None = None,
             page_token: str | None = None, **params: Any) -> dict:
        return self.fp.list_page(self._collection(), filter=filter, order_by=order_by, page_size=page_size,
                                 page_token=page_token, **params)

    def iter(self, **query: Any) -> Iterator[Resource]:
        return self.fp.iter_list(self._collection(), self.items_key, **query)

    def update(self, ref: str, fields: dict, update_mask: str | None = None) -> Resource:
        return self.fp.patch(self._path(ref), fields, params={"updateMask": update_mask})

    def delete(self, ref: str, **params: Any) -> Resource:
        return self.fp.delete(self._path(ref), params=params)


class Accounts(_Collection):
    items_key = "accounts"

    def get(self, ref: str | None = None) -> Resource:
        account = (ref or self.fp.account_id).removeprefix("accounts/")
        return self.fp.get(f"/v1/accounts/{account}")

    def list(self, **query: Any) -> dict:
        return self.fp.list_page("/v1/accounts", **query)

    def iter(self, **query: Any) -> Iterator[Resource]:
        return self.fp.iter_list("/v1/accounts", self.items_key, **query)

    def create(self, email: str, *, display_name: str | None = None, account_type: str | None = None,
               account_id: str | None = None) -> Resource:
        return self.fp.post("/v1/accounts", _set(email=email, displayName=display_name, accountType=account_type),
                            params={"accountId": account_id})

    def update(self, ref: str | None, fields: dict, update_mask: str | None = None) -> Resource:  # type: ignore[override]
        account = (ref or self.fp.account_id).removeprefix("accounts/")
        return self.fp.patch(f"/v1/accounts/{account}", fields, params={"updateMask": update_mask})

    def delete(self, ref: str, **params: Any) -> Resource:
        """Our extension: a platform admin deletes an empty account."""
        return self.fp.delete(f"/v1/accounts/{ref.removeprefix('accounts/')}", params=params)

    def name(self, ref: str) -> str:
        return f"accounts/{ref.removeprefix('accounts/')}"


class Users(_Collection):
    collection, items_key = "users", "users"

    def create(self, user_id: str | None, *, role: str, email: str | None = None,
               display_name: str | None = None, service_account: bool | None = None) -> Resource:
        body = _set(role=role, email=email, displayName=display_name, serviceAccount=service_account)
        return self.fp.post(self._collection(), body, params={"userId": user_id})

    def disable(self, ref: str) -> Resource:
        """Our extension: state DISABLED and every key of the user revoked."""
        return self.fp.post(self._path(ref, ":disable"), {})

    def enable(self, ref: str) -> Resource:
        return self.fp.post(self._path(ref, ":enable"), {})


class ApiKeys:
    """Keys live under a user: accounts/{a}/users/{u}/apiKeys."""
    items_key = "apiKeys"

    def __init__(self, fp: "Fireplace"):
        self.fp = fp

    def _collection(self, user: str) -> str:
        return self.fp.path("users", user, "/apiKeys")

    def create(self, user: str, *, display_name: str | None = None, expire_time: str | None = None) -> Resource:
        return self.fp.post(self._collection(user), {"apiKey": _set(displayName=display_name, expireTime=expire_time)})

    def list(self, user: str, **query: Any) -> dict:
        return self.fp.list_page(self._collection(user), **query)

    def iter(self, user: str, **query: Any) -> Iterator[Resource]:
        return self.fp.iter_list(self._collection(user), self.items_key, **query)

    def get(self, user: str, key_id: str) -> Resource:
        """One active key (the API has no GET of a key: the list, filtered by its ID)."""
        from fireplace.errors import not_found
        key_id = key_id.rsplit("/", 1)[-1]
        found = self.list(user, filter=f'key_id="{key_id}"', page_size=1).get(self.items_key) or []
        if not found:
            raise not_found("API key", f"{self._collection(user).removeprefix('/v1/')}/{key_id}")
        return found[0]

    def update(self, user: str, key_id: str, fields: dict) -> Resource:
        """Our extension: only displayName changes."""
        return self.fp.patch(f"{self._collection(user)}/{key_id.rsplit('/', 1)[-1]}", fields)

    def delete(self, user: str, key_id: str) -> Resource:
        return self.fp.post(self._collection(user) + ":delete", {"keyId": key_id})


class Models(_Collection):
    collection, items_key = "models", "models"

    def create(self, model_id: str, model: dict) -> Resource:
        return self.fp.post(self._collection(), {"modelId": model_id, "model": model})

    def upload_endpoints(self, ref: str, sizes: dict[str, int]) -> dict[str, str]:
        """filename -> signed PUT URL (declares each file's size in bytes)."""
        return self.upload_plan(ref, sizes).get("filenameToSignedUrls", {})

    def upload_plan(self, ref: str, sizes: dict[str, int]) -> Resource:
        """:getUploadEndpoint's whole answer: {filenameToSignedUrls, filenameToSha256 (the files
        the server already holds complete at these sizes, with their SHA-256)}."""
        body = {"filenameToSize": {k: str(v) for k, v in sizes.items()}}
        return self.fp.post(self._path(ref, ":getUploadEndpoint"), body)

    def validate_upload(self, ref: str) -> Resource:
        """{"warnings": [...]}; the model is READY afterwards."""
        return self.fp.get(self._path(ref, ":validateUpload"))

    def download_endpoints(self, ref: str) -> dict[str, str]:
        return self.fp.get(self._path(ref, ":getDownloadEndpoint")).get("filenameToSignedUrls", {})


class Datasets(_Collection):
    collection, items_key = "datasets", "datasets"

    def create(self, dataset_id: str, dataset: dict | None = None) -> Resource:
        return self.fp.post(self._collection(), {"datasetId": dataset_id, "dataset": dataset or {}})

    def upload_endpoint(self, ref: str, filename: str, size: int) -> str:
        body = {"filenameToSize": {filename: str(size)}}
        return self.fp.post(self._path(ref, ":getUploadEndpoint"), body)["filenameToSignedUrls"][filename]

    def validate_upload(self, ref: str) -> Resource:
        """Checks the PUT file line by line; the dataset (READY) or a 400 listing the lines."""
        return self.fp.post(self._path(ref, ":validateUpload"), {})

    def download_endpoints(self, ref: str) -> dict[str, str]:
        return self.fp.get(self._path(ref, ":getDownloadEndpoint")).get("filenameToSignedUrls", {})


class Deployments(_Collection):
    collection, items_key = "deployments", "deployments"

    def create(self, base_model: str, fields: dict | None = None, *, deployment_id: str | None = None,
               validate_only: bool | None = None) -> Resource:
        return self.fp.post(self._collection(), {**(fields or {}), "baseModel": base_model},
                            params={"deploymentId": deployment_id, "validateOnly": validate_only or None})

    def delete(self, ref: str, *, hard: bool = False, ignore_checks: bool = False) -> Resource:
        return self.fp.delete(self._path(ref), params={"hard": hard or None, "ignoreChecks": ignore_checks or None})

    def undelete(self, ref: str) -> Resource:
        return self.fp.post(self._path(ref, ":undelete"), {})

    def scale(self, ref: str, replica_count: int) -> Resource:
        return self.fp.patch(self._path(ref, ":scale"), {"replicaCount": replica_count})


class DeployedModels(_Collection):
    collection, items_key = "deployedModels", "deployedModels"

    def load(self, model: str, deployment: str, *, public: bool | None = None, default: bool | None = None,
             display_name: str | None = None, description: str | None = None) -> Resource:
        body = _set(model=model, deployment=deployment, public=public, default=default,
                    displayName=display_name, description=description)
        return self.fp.post(self._collection(), body)

    def find(self, model: str, deployment: str) -> Resource | None:
        """The deployed model of `model` (full name) in `deployment` (full name), if loaded."""
        query = f'model="{model}" AND deployment="{deployment}"'
        return next(iter(self.iter(filter=query, page_size=1)), None)

    def unload(self, ref: str) -> Resource:
        return self.fp.delete(self._path(ref))


class SftJobs(_Collection):
    collection, items_key = "supervisedFineTuningJobs", "supervisedFineTuningJobs"

    def create(self, fields: dict, *, job_id: str | None = None) -> Resource:
        return self.fp.post(self._collection(), fields, params={"supervisedFineTuningJobId": job_id})

    def cancel(self, ref: str) -> Resource:
        return self.fp.post(self._path(ref, ":cancel"), {})

    def resume(self, ref: str) -> Resource:
        return self.fp.post(self._path(ref, ":resume"), {})

    def metrics(self, ref: str, **query: Any) -> Iterator[Resource]:
        """Per-step metrics (`GET .../supervisedFineTuningJobs/{j}/metrics`, paged)."""
        return self.fp.iter_list(self._path(ref, "/metrics"), "metrics", **query)

    def latest_metrics(self, ref: str) -> Resource | None:
        """The metrics of the job's last step so far (None before the first)."""
        page = self.fp.list_page(self._path(ref, "/metrics"), order_by="step desc", page_size=1)
        return next(iter(page.get("metrics") or []), None)

    def events(self, ref: str, **query: Any) -> Iterator[Resource]:
        return self.fp.iter_list(self._path(ref, "/events"), "events", **query)


class Quotas(_Collection):
    collection, items_key = "quotas", "quotas"

    def update(self, ref: str, max_value: int) -> Resource:  # type: ignore[override]
        return self.fp.patch(self._path(ref), {"maxValue": str(max_value)})

    def usage(self, account: str | None = None, *, start_date: str | None = None,
              end_date: str | None = None) -> Resource:
        """Quota usage and metered inference per model and UTC day ({..., "modelUsage": [{model,
        day, requests, promptTokens, completionTokens}]}); dates YYYY-MM-DD, both inclusive."""
        return self.fp.get(f"/v1/accounts/{(account or self.fp.account_id).removeprefix('accounts/')}/usage",
                           params={"startDate": start_date, "endDate": end_date})
