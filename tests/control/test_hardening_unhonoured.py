"""Issue 11, class 7 for every resource beside deployments (test_hardening_honesty.py): a field
of the official SDK's create/update bodies that Fireplace would otherwise accept and ignore is
refused with a 400 naming it, while a normal SDK create still works and returns what it set.
(Fine-tuning jobs: test_fine_tuning_jobs.py, whose server runs no training workers.)"""
from __future__ import annotations

import pytest

from tests.conftest import http, sdk
from tests.control.helpers_resources import expect_error, ready_addon, ready_base_model, uploading_dataset


def _refused(response, field: str) -> None:
    assert response.status_code == 400 and response.json()["code"] == 3, response.text
    assert field in response.json()["message"], response.text


@pytest.mark.parametrize("field,value", [("defaultDraftModel", "accounts/fireplace/models/x"),
                                         ("defaultDraftTokenCount", 4), ("snapshotType", "FULL_SNAPSHOT"),
                                         ("deprecationDate", {"year": 2030, "month": 1, "day": 1}),
                                         ("teftDetails", {"x": 1})])
def test_unhonoured_model_fields_are_refused_by_name(server, unique, field, value):
    with http(server) as c:
        models = f"/v1/accounts/{server.account_id}/models"
        _refused(c.post(models, json={"modelId": unique("m"), "model": {"kind": "HF_BASE_MODEL", field: value}}),
                 field)
        model_id = unique("m")
        assert c.post(models, json={"modelId": model_id, "model": {"kind": "HF_BASE_MODEL"}}).status_code == 200
        _refused(c.patch(f"{models}/{model_id}", json={field: value}), field)


def test_model_create_honours_what_it_accepts(server, unique):
    client = sdk(server)
    expect_error(400, 3, client.models.create, model_id=unique("m"), cluster="us-1", model={"kind": "HF_BASE_MODEL"})
    m = client.models.create(model_id=unique("m"), model={
        "kind": "HF_BASE_MODEL", "displayName": "d", "description": "x", "contextLength": 512,
        "supportsTools": True, "huggingFaceUrl": "https://huggingface.co/x/y", "githubUrl": "https://github.com/x/y",
        "baseModelDetails": {"worldSize": 1, "moe": False}})
    assert (m.display_name, m.description, m.context_length, m.supports_tools, m.hugging_face_url, m.github_url,
            m.base_model_details.world_size) == ("d", "x", 512, True, "https://huggingface.co/x/y",
                                                 "https://github.com/x/y", 1)
    model_id = m.name.rsplit("/", 1)[1]
    # kind and the file details may be sent back unchanged, never changed
    assert client.models.update(model_id, kind="HF_BASE_MODEL", base_model_details={"worldSize": 1},
                                description="y").description == "y"
    err = expect_error(400, 3, client.models.update, model_id, base_model_details={"worldSize": 8})
    assert "baseModelDetails.worldSize" in err.body["message"]
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/models/{model_id}:getUploadEndpoint",
                   json={"filenameToSize": {"config.json": "10"}, "enableResumableUpload": True})
        _refused(r, "enableResumableUpload")
        r = c.post(f"/v1/accounts/{server.account_id}/models/{model_id}:getUploadEndpoint",
                   json={"filenameToSize": {"config.json": "10"}, "readMask": "name"})
        _refused(r, "readMask")


def test_dataset_fields_are_honoured_or_refused(server, unique):
    """Every writable dataset field the SDK sends is stored and returned; readMask in the
    :getUploadEndpoint body (a partial response) is refused by name."""
    client = sdk(server)
    fields = {"displayName": "d", "format": "CHAT", "exampleCount": "3", "userUploaded": {"k": "v"},
              "externalUrl": "https://example.com/d", "sourceJobName": "accounts/a/jobs/j",
              "evalProtocol": {"p": 1}, "evaluationResult": {"evaluationJobId": "e"},
              "splitted": {"sourceDatasetId": "s"}, "transformed": {"sourceDatasetId": "t", "originalFormat": "CHAT"}}
    ds = client.datasets.create(dataset_id=unique("ds"), dataset=fields)
    got = ds.model_dump(by_alias=True, exclude_none=True)
    for key, value in fields.items():
        assert got[key] == value, (key, got.get(key))
    dataset_id = uploading_dataset(server).rsplit("/", 1)[1]
    with http(server) as c:
        r = c.post(f"/v1/accounts/{server.account_id}/datasets/{dataset_id}:getUploadEndpoint",
                   json={"filenameToSize": {"train.jsonl": "10"}, "readMask": "name"})
        _refused(r, "readMask")
        ok = c.post(f"/v1/accounts/{server.account_id}/datasets/{dataset_id}:getUploadEndpoint",
                    json={"filenameToSize": {"train.jsonl": "10"}, "readMask": "*"})
        assert ok.status_code == 200, ok.text


def test_unhonoured_deployed_model_fields_are_refused_by_name(server):
    client = sdk(server)
    base = ready_base_model(server)
    addon = ready_addon(server, base)
    deployment = client.deployments.create(base_model=base, enable_addons=True, max_replica_count=1).name
    with http(server) as c:
        url = f"/v1/accounts/{server.account_id}/deployedModels"
        _refused(c.post(url, json={"model": addon, "deployment": deployment, "replaceMergedAddon": True}),
                 "replaceMergedAddon")
        loaded = client.lora.load(model=addon, deployment=deployment, display_name="d", description="x")
        assert (loaded.model, loaded.deployment, loaded.display_name, loaded.description) == (
            addon, deployment, "d", "x")
        dm_id = loaded.name.rsplit("/", 1)[1]
        _refused(c.patch(f"{url}/{dm_id}", json={"replaceMergedAddon": True}), "replaceMergedAddon")
        client.lora.unload(dm_id)
