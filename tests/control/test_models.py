"""Models through the official SDK: create, get, list, update, delete; kinds and peftDetails;
roles and tenant isolation. Upload/download flows are in test_model_upload.py."""
from __future__ import annotations

import json

import fireworks
import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from tests.conftest import http, new_account, sdk, user_key


# ---- helpers (also used by test_model_upload.py) ---------------------------------------------

def tiny_base_files(hidden: int = 8) -> dict[str, bytes]:
    """The smallest base model validation accepts: config.json + one safetensors file."""
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 512}
    weights = {"model.embed_tokens.weight": np.zeros((16, hidden), dtype=np.float32)}
    return {"config.json": json.dumps(config).encode(), "model.safetensors": save(weights)}


def put_files(client, model_id: str, files: dict[str, bytes], account_id: str | None = None) -> None:
    kw = {"account_id": account_id} if account_id else {}
    urls = client.models.get_upload_endpoint(
        model_id, filename_to_size={k: str(len(v)) for k, v in files.items()}, **kw).filename_to_signed_urls
    assert set(urls) == set(files)
    for name, url in urls.items():
        r = httpx.put(url, content=files[name])
        assert r.status_code == 200, r.text


def ready_base(client, model_id: str, files: dict[str, bytes] | None = None):
    client.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL", "displayName": model_id})
    put_files(client, model_id, files or tiny_base_files())
    client.models.validate_upload(model_id)
    return client.models.get(model_id)


def expect_error(exc_type, status: int, code: int, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    assert info.value.status_code == status, info.value.body
    assert info.value.body["code"] == code, info.value.body
    return info.value.body


# ---- create / get ---------------------------------------------------------------------------

def test_create_base_model_starts_uploading(admin, server, unique):
    model_id = unique("base")
    m = admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL", "displayName": "Tiny",
                                                      "description": "d", "contextLength": 1024,
                                                      "conversationConfig": {"style": "jinja", "template": "{{x}}"}})
    assert m.name == f"accounts/{server.account_id}/models/{model_id}"
    assert (m.kind, m.state, m.display_name, m.description) == ("HF_BASE_MODEL", "UPLOADING", "Tiny", "d")
    assert m.context_length == 1024 and m.conversation_config.style == "jinja"
    assert m.status.code == "OK" and m.create_time is not None
    got = admin.models.get(model_id)
    assert got.name == m.name and got.state == "UPLOADING" and got.deployed_model_refs == []


def test_output_only_fields_on_create_are_ignored(server, unique):
    model_id = unique("base")
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/models", json={
            "modelId": model_id, "model": {"kind": "HF_BASE_MODEL", "state": "READY", "name": "accounts/x/models/y",
                                           "createTime": "2001-01-01T00:00:00Z",
                                           "baseModelDetails": {"parameterCount": "999"}}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "UPLOADING" and body["name"].endswith(f"/models/{model_id}")
    assert not body["createTime"].startswith("2001") and "parameterCount" not in body.get("baseModelDetails", {})


def test_default_kind_is_addon_and_needs_peft_details(admin, unique):
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.create, model_id=unique("m"))
    assert "peftDetails.baseModel" in body["message"]


@pytest.mark.parametrize("kind", ["FLUMINA_BASE_MODEL", "EMBEDDING_MODEL", "NOT_A_KIND"])
def test_unsupported_kind_is_refused(admin, unique, kind):
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.create,
                        model_id=unique("m"), model={"kind": kind})
    assert kind in body["message"] and "HF_BASE_MODEL" in body["message"]


@pytest.mark.parametrize("bad_id", ["1model", "Upper", "-x", "x-", "a" * 64, "a_b", "a/b/c"])
def test_invalid_model_ids_are_refused(admin, bad_id):
    expect_error(fireworks.BadRequestError, 400, 3, admin.models.create,
                 model_id=bad_id, model={"kind": "HF_BASE_MODEL"})


def test_duplicate_create_is_409(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    expect_error(fireworks.ConflictError, 409, 6, admin.models.create,
                 model_id=model_id, model={"kind": "HF_BASE_MODEL"})


def test_unknown_model_is_404_code_5(admin, unique):
    missing = unique("nope")
    body = expect_error(fireworks.NotFoundError, 404, 5, admin.models.get, missing)
    assert missing in body["message"]
    expect_error(fireworks.NotFoundError, 404, 5, admin.models.update, missing, description="x")
    expect_error(fireworks.NotFoundError, 404, 5, admin.models.delete, missing)
    expect_error(fireworks.NotFoundError, 404, 5, admin.models.validate_upload, missing)
    expect_error(fireworks.NotFoundError, 404, 5, admin.models.get_upload_endpoint, missing,
                 filename_to_size={"config.json": "2"})


def test_full_name_is_accepted_in_the_path(admin, server, unique):
    model_id = unique("base")
    m = admin.models.create(model_id=f"accounts/{server.account_id}/models/{model_id}",
                            model={"kind": "HF_BASE_MODEL"})
    assert admin.models.get(m.name).name == m.name
    assert admin.models.prepare(model_id, precision="BF16")["name"] == m.name  # :prepare is a no-op


# ---- addons ---------------------------------------------------------------------------------

def test_addon_validates_its_base_model(admin, server, unique):
    base = ready_base(admin, unique("base"))
    addon = admin.models.create(model_id=unique("lora"), model={
        "kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": base.name, "r": 8, "targetModules": ["q_proj"]}})
    assert addon.peft_details.base_model == base.name and addon.peft_details.r == 8
    assert addon.peft_details.target_modules == ["q_proj"] and addon.supports_lora is True
    assert addon.base_model_details is None
    # bare ID: the addon's own account
    by_id = admin.models.create(model_id=unique("lora"), model={"peftDetails": {"baseModel": base.name.split("/")[-1]}})
    assert by_id.kind == "HF_PEFT_ADDON" and by_id.peft_details.base_model == base.name

    missing = f"accounts/{server.account_id}/models/{unique('gone')}"
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.create, model_id=unique("lora"),
                        model={"peftDetails": {"baseModel": missing}})
    assert missing in body["message"]
    uploading = admin.models.create(model_id=unique("base"), model={"kind": "HF_BASE_MODEL"})
    body = expect_error(fireworks.BadRequestError, 400, 9, admin.models.create, model_id=unique("lora"),
                        model={"peftDetails": {"baseModel": uploading.name}})
    assert "UPLOADING" in body["message"]
    body = expect_error(fireworks.BadRequestError, 400, 9, admin.models.create, model_id=unique("lora"),
                        model={"peftDetails": {"baseModel": addon.name}})
    assert "HF_PEFT_ADDON" in body["message"]


@pytest.mark.parametrize("r", [0, 3, 65, 1024])
def test_addon_rank_out_of_range_is_refused(admin, unique, r):
    base = ready_base(admin, unique("base"))
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.create, model_id=unique("lora"),
                        model={"peftDetails": {"baseModel": base.name, "r": r}})
    assert "peftDetails.r" in body["message"]


def test_peft_details_on_a_base_model_are_refused(admin, unique):
    expect_error(fireworks.BadRequestError, 400, 3, admin.models.create, model_id=unique("m"),
                 model={"kind": "HF_BASE_MODEL", "peftDetails": {"baseModel": "accounts/x/models/y"}})


# ---- list -----------------------------------------------------------------------------------

def test_list_filters_orders_and_pages(admin, unique):
    tag = unique("tag")
    ids = sorted(unique("m") for _ in range(3))
    for i, model_id in enumerate(ids):
        admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL", "displayName": tag,
                                                      "description": str(i)})
    flt = f'display_name="{tag}"'
    page = admin.models.list(filter=flt, page_size=2)
    assert [m.name.split("/")[-1] for m in page.models] == ids[:2] and page.next_page_token
    rest = admin.models.list(filter=flt, page_size=2, page_token=page.next_page_token)
    assert [m.name.split("/")[-1] for m in rest.models] == ids[2:] and not rest.next_page_token
    assert [m.name.split("/")[-1] for m in admin.models.list(filter=flt)] == ids  # auto-paging
    desc = admin.models.list(filter=flt, order_by="name desc")
    assert [m.name.split("/")[-1] for m in desc.models] == ids[::-1]
    both = admin.models.list(filter=f'{flt} AND kind="HF_BASE_MODEL" AND state="UPLOADING" AND NOT name="{ids[0]}"')
    assert [m.name.split("/")[-1] for m in both.models] == ids[1:]
    assert admin.models.list(filter=f'{flt} AND kind="HF_PEFT_ADDON"').models == []


def test_list_bad_filter_is_a_clear_400(admin):
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.list, filter='owner="x"')
    assert "owner" in body["message"]
    expect_error(fireworks.BadRequestError, 400, 3, admin.models.list, filter='display_name:"x"')
    expect_error(fireworks.BadRequestError, 400, 3, admin.models.list, order_by="size")


def test_public_catalog_is_listable_by_everyone(server):
    _, key = new_account(server)
    with http(server, key) as c:
        r = c.get("/v1/accounts/fireplace/models")
    assert r.status_code == 200, r.text
    assert "models" in r.json()


# ---- update ---------------------------------------------------------------------------------

def test_patch_merges_present_fields_only(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL", "displayName": "A",
                                                  "description": "keep", "contextLength": 100})
    m = admin.models.update(model_id, display_name="B")
    assert (m.display_name, m.description, m.context_length) == ("B", "keep", 100)
    m = admin.models.update(model_id, context_length=200, conversation_config={"style": "chatml"})
    assert (m.display_name, m.context_length, m.conversation_config.style) == ("B", 200, "chatml")


def test_patch_cannot_change_state_kind_or_owner(admin, server, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    changed = expect_error(fireworks.BadRequestError, 400, 3, admin.models.update, model_id, kind="HF_PEFT_ADDON")
    assert "kind" in changed["message"]
    m = admin.models.update(model_id, kind="HF_BASE_MODEL", description="x",   # sent unchanged: accepted
                            extra_body={"state": "READY", "name": "accounts/other/models/z",
                                        "createTime": "2001-01-01T00:00:00Z"})
    assert (m.kind, m.state, m.description) == ("HF_BASE_MODEL", "UPLOADING", "x")
    assert m.name == f"accounts/{server.account_id}/models/{model_id}"
    assert m.create_time.year != 2001
    body = expect_error(fireworks.BadRequestError, 400, 3, admin.models.update, model_id,
                        kind="HF_PEFT_ADDON", extra_query={"updateMask": "kind"})
    assert "kind" in body["message"]


def test_patch_with_update_mask(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL", "displayName": "A", "description": "d"})
    # only the masked field changes; a masked field absent from the body is cleared
    m = admin.models.update(model_id, display_name="B", description="ignored",
                            extra_query={"updateMask": "displayName"})
    assert (m.display_name, m.description) == ("B", "d")
    m = admin.models.update(model_id, extra_query={"updateMask": "description"})
    assert m.description is None and m.display_name == "B"
    expect_error(fireworks.BadRequestError, 400, 3, admin.models.update, model_id,
                 extra_query={"updateMask": "no_such_field"})


# ---- delete ---------------------------------------------------------------------------------

def test_delete(admin, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    admin.models.delete(model_id)
    expect_error(fireworks.NotFoundError, 404, 5, admin.models.get, model_id)
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})  # the ID is free again


def test_delete_base_model_with_addons_is_refused(admin, unique):
    base = ready_base(admin, unique("base"))
    addon = admin.models.create(model_id=unique("lora"), model={"peftDetails": {"baseModel": base.name}})
    body = expect_error(fireworks.BadRequestError, 400, 9, admin.models.delete, base.name.split("/")[-1])
    assert addon.name in body["message"]
    admin.models.delete(addon.name.split("/")[-1])
    admin.models.delete(base.name.split("/")[-1])


def test_delete_model_used_by_a_deployment_is_refused(admin, unique):
    base = ready_base(admin, unique("base"))
    with http_for(admin) as c:
        r = c.post(f"/v1/accounts/{admin.account_id}/deployments", params={"deploymentId": unique("dep")},
                   json={"baseModel": base.name, "minReplicaCount": 0, "maxReplicaCount": 1})
    if r.status_code in (404, 405):
        pytest.skip("deployments are not served yet")
    assert r.status_code == 200, r.text
    body = expect_error(fireworks.BadRequestError, 400, 9, admin.models.delete, base.name.split("/")[-1])
    assert r.json()["name"] in body["message"]


def http_for(client) -> httpx.Client:
    return httpx.Client(base_url=str(client.base_url), timeout=30,
                        headers={"Authorization": f"Bearer {client.api_key}"})


# ---- roles and isolation --------------------------------------------------------------------

def test_roles(server, unique):
    reader = sdk(server, user_key(server, "user"))
    writer = sdk(server, user_key(server, "contributor"))
    model_id = unique("base")
    writer.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL"})
    assert reader.models.get(model_id).state == "UPLOADING"
    expect_error(fireworks.PermissionDeniedError, 403, 7, reader.models.create,
                 model_id=unique("m"), model={"kind": "HF_BASE_MODEL"})
    expect_error(fireworks.PermissionDeniedError, 403, 7, reader.models.update, model_id, description="x")
    expect_error(fireworks.PermissionDeniedError, 403, 7, reader.models.delete, model_id)
    expect_error(fireworks.PermissionDeniedError, 403, 7, reader.models.get_upload_endpoint, model_id,
                 filename_to_size={"config.json": "1"})
    writer.models.delete(model_id)


def test_other_accounts_private_model_looks_missing(admin, server, unique):
    base = ready_base(admin, unique("base"))
    model_id = base.name.split("/")[-1]
    missing_id = unique("zz")
    other_account, other_key = new_account(server)
    other = sdk(server, other_key, account_id=other_account)
    a = server.account_id

    def same(call, *args, **kwargs):
        """The private model and a missing one answer alike (names aside)."""
        seen = []
        for mid in (model_id, missing_id):
            with pytest.raises(fireworks.APIStatusError) as info:
                call(*[mid if x is None else x for x in args], **kwargs)
            seen.append((info.value.status_code, dict(info.value.body,
                                                      message=info.value.body["message"].replace(mid, "<id>"))))
        assert seen[0] == seen[1], seen
        assert seen[0][0] == 404 and seen[0][1]["code"] == 5
    same(other.models.get, None, account_id=a)
    same(other.models.update, None, account_id=a, description="x")
    same(other.models.delete, None, account_id=a)
    same(other.models.get_download_endpoint, None, account_id=a)
    same(other.models.validate_upload, None, account_id=a)
    same(other.models.get_upload_endpoint, None, account_id=a, filename_to_size={"config.json": "1"})
    expect_error(fireworks.NotFoundError, 404, 5, other.models.list, account_id=a)
    # as a base model reference it is as missing as a missing one
    bodies = []
    for mid in (model_id, missing_id):
        body = expect_error(fireworks.BadRequestError, 400, 3, other.models.create, model_id=unique("lora"),
                            model={"peftDetails": {"baseModel": f"accounts/{a}/models/{mid}"}})
        bodies.append(body["message"].replace(mid, "<id>"))
    assert bodies[0] == bodies[1]
    # and the owner still sees it unchanged
    assert admin.models.get(model_id).state == "READY"


def test_public_model_is_readable_by_other_accounts(admin, server, unique):
    model_id = unique("base")
    admin.models.create(model_id=model_id, model={"kind": "HF_BASE_MODEL", "public": True})
    other_account, other_key = new_account(server)
    other = sdk(server, other_key, account_id=other_account)
    assert other.models.get(model_id, account_id=server.account_id).public is True
    expect_error(fireworks.NotFoundError, 404, 5, other.models.update, model_id,
                 account_id=server.account_id, description="x")


def test_get_shows_deployed_model_refs(admin, unique):
    base = ready_base(admin, unique("base"))
    addon_id = unique("lora")
    admin.models.create(model_id=addon_id, model={"peftDetails": {"baseModel": base.name}})
    put_files(admin, addon_id, tiny_adapter_files())
    admin.models.validate_upload(addon_id)
    with http_for(admin) as c:
        r = c.post(f"/v1/accounts/{admin.account_id}/deployments", params={"deploymentId": unique("dep")},
                   json={"baseModel": base.name, "enableAddons": True, "maxReplicaCount": 1})
        if r.status_code in (404, 405):
            pytest.skip("deployments are not served yet")
        assert r.status_code == 200, r.text
        deployment = r.json()["name"]
    try:
        loaded = admin.lora.load(model=f"accounts/{admin.account_id}/models/{addon_id}", deployment=deployment)
    except fireworks.NotFoundError:
        pytest.skip("deployed models are not served yet")
    refs = admin.models.get(addon_id).deployed_model_refs
    assert [(x.name, x.deployment, x.default) for x in refs] == [(loaded.name, deployment, True)]
    assert refs[0].state == loaded.state
    expect_error(fireworks.BadRequestError, 400, 9, admin.models.delete, addon_id)


def tiny_adapter_files(r: int = 8, hidden: int = 8) -> dict[str, bytes]:
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj"],
              "base_model_name_or_path": "tiny"}
    weights = {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((r, hidden), dtype=np.float32),
               "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((hidden, r), dtype=np.float32)}
    return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": save(weights)}
