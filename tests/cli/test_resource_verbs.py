"""Every resource verb of the CLI against a real server: what it prints with -o json is what the
API answers, both word orders do the same, and each change is visible through the API
afterwards. (SQLite only: the CLI sees nothing but HTTP, and the control-plane tests already
run every call on both backends.)"""
from __future__ import annotations

import uuid

import pytest

from tests.cli.helpers import write_files
from tests.conftest import user_key
from tests.control.helpers_resources import chat_jsonl, tiny_addon_files, tiny_base_files


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def base_model(cli, tmp_path_factory) -> str:
    directory = write_files(tmp_path_factory.mktemp("base"), tiny_base_files())
    model = cli.json("create", "model", uid("base"), str(directory))
    assert model["state"] == "READY" and model["kind"] == "HF_BASE_MODEL"
    return model["name"]


@pytest.fixture(scope="module")
def dataset(cli, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ds") / "train.jsonl"
    path.write_bytes(chat_jsonl())
    return cli.json("create", "dataset", uid("ds"), str(path))["name"]


def test_account_get_and_list_match_the_api(cli):
    account = cli.json("get", "account")
    assert account == cli.api(f"/v1/{account['name']}")
    assert account["name"] == f"accounts/{cli.server.account_id}"
    listed = cli.json("list", "accounts", "--all")
    assert account in listed and "accounts/fireplace" in [a["name"] for a in listed]
    assert cli.json("account", "get", "fireplace")["accountType"] == "ENTERPRISE"


def test_create_account_as_platform_admin(cli):
    email = f"{uid('dev')}@example.com"
    account = cli.json("create", "account", "--email", email, "--display-name", "Dev")
    assert account["email"] == email and account["accountType"] == "DEVELOPER"
    assert cli.json("get", "account", account["name"]) == account
    renamed = cli.json("update", "account", account["name"], "--display-name", "Dev team")
    assert renamed["displayName"] == "Dev team" and renamed == cli.api(f"/v1/{account['name']}")
    cli.run("update", "account", account["name"], expect=2)   # --display-name is required
    cli.run("delete", "account", account["name"])
    cli.run("get", "account", account["name"], expect=4)


def test_users_create_get_list_update(cli):
    user_id = uid("u")
    created = cli.json("create", "user", user_id, "--role", "contributor", "--email", f"{user_id}@example.com")
    assert created["role"] == "contributor"
    assert cli.json("user", "get", user_id) == cli.api(f"/v1/{created['name']}")
    assert created["name"] in cli.names("list", "users", "--all")
    assert cli.json("update", "user", user_id, "--role", "user")["role"] == "user"
    assert cli.api(f"/v1/{created['name']}")["role"] == "user"
    cli.run("update", "user", user_id, expect=2)  # nothing to change: a usage error
    key = cli.json("create", "api-key", "--user", user_id)["key"]
    assert cli.json("delete", "user", user_id)["state"] == "DISABLED"
    cli.run("list", "models", "--api-key", key, expect=5)   # its keys are revoked
    assert cli.json("user", "undelete", user_id)["state"] == "READY"


def test_api_key_create_list_delete_and_the_key_works_then_not(cli):
    user_id = uid("u")
    cli.run("create", "user", user_id, "--role", "user", "--email", f"{user_id}@example.com")
    key = cli.json("create", "api-key", "--user", user_id, "--display-name", "ci")
    assert key["key"].startswith("fw_") and key["displayName"] == "ci"
    assert key["keyId"] in [k["keyId"] for k in cli.json("list", "api-keys", "--user", user_id)]
    got = cli.json("get", "api-key", key["keyId"], "--user", user_id)
    assert got["name"] == key["name"] and "key" not in got and got["displayName"] == "ci"
    cli.run("get", "api-key", "k" + "0" * 15, "--user", user_id, expect=4)
    renamed = cli.json("update", "api-key", key["keyId"], "--user", user_id, "--display-name", "nightly")
    assert renamed["displayName"] == "nightly" and "key" not in renamed
    assert cli.json("api-key", "update", key["name"], "--display-name", "ci")["displayName"] == "ci"  # full name
    as_user = cli.run("whoami", "-o", "json", "--api-key", key["key"]).stdout
    assert f"users/{user_id}" in as_user and '"role": "user"' in as_user
    cli.run("delete", "api-key", key["keyId"], "--user", user_id)
    assert key["keyId"] not in [k["keyId"] for k in cli.json("list", "api-keys", "--user", user_id)]
    revoked = cli.run("list", "models", "--api-key", key["key"], expect=5)
    assert "invalid API key" in revoked.stderr


def test_models_upload_get_list_update_download_delete(cli, base_model, tmp_path):
    assert cli.json("get", "model", base_model) == cli.api(f"/v1/{base_model}")
    addon_dir = write_files(tmp_path / "adapter", tiny_addon_files())
    addon_id = uid("lora")
    result = cli.run("create", "model", addon_id, str(addon_dir), "--base-model", base_model, "-o", "json")
    assert "uploading adapter_model.safetensors" in result.stderr and "(100%)" in result.stderr
    addon = cli.json("model", "get", addon_id)
    assert addon["kind"] == "HF_PEFT_ADDON" and addon["state"] == "READY"
    assert addon["peftDetails"]["baseModel"] == base_model
    addons = cli.json("list", "models", "--filter", 'kind="HF_PEFT_ADDON"', "--all")
    assert addon["name"] in [m["name"] for m in addons] and base_model not in [m["name"] for m in addons]
    assert cli.json("update", "model", addon_id, "--display-name", "Support bot", "--description", "v2")[
        "displayName"] == "Support bot"
    assert cli.api(f"/v1/{addon['name']}")["description"] == "v2"
    out = tmp_path / "downloaded"
    cli.run("download", "model", addon_id, str(out))
    for name, data in tiny_addon_files().items():
        assert (out / name).read_bytes() == data
    cli.run("delete", "model", addon_id)
    cli.run("get", "model", addon_id, expect=4)


def test_upload_model_into_an_uploading_model(cli, tmp_path):
    model_id = uid("m")
    cli.run("model", "create", model_id, "--kind", "HF_BASE_MODEL")
    assert cli.json("get", "model", model_id)["state"] == "UPLOADING"
    directory = write_files(tmp_path / "m", tiny_base_files())
    assert cli.json("upload", "model", model_id, str(directory))["state"] == "READY"


def test_datasets_create_with_progress_get_list_update_download_delete(cli, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_jsonl())
    dataset_id = uid("ds")
    result = cli.run("create", "dataset", dataset_id, str(path), "-o", "json")
    assert f"uploading train.jsonl: 0 B of {len(chat_jsonl())} B (0%)" in result.stderr
    assert "(100%)" in result.stderr
    import json
    printed = json.loads(result.stdout)
    assert printed["state"] == "READY" and printed["exampleCount"] == "3"
    assert cli.json("dataset", "get", dataset_id) == cli.api(f"/v1/{printed['name']}")
    assert cli.json("update", "dataset", dataset_id, "--display-name", "Chats")["displayName"] == "Chats"
    out = tmp_path / "out"
    cli.run("download", "dataset", dataset_id, str(out))
    assert (out / "train.jsonl").read_bytes() == chat_jsonl()
    cli.run("delete", "dataset", dataset_id)
    cli.run("get", "dataset", dataset_id, expect=4)


def test_a_bad_dataset_lists_its_lines_exits_3_and_leaves_nothing(cli, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    "this is not json\n"
                    '{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}\n')
    dataset_id = uid("bad")
    result = cli.run("create", "dataset", dataset_id, str(path), expect=3)
    assert "line 2: invalid JSON" in result.stderr
    assert "line 3, messages[0].role:" in result.stderr and "'wizard'" in result.stderr
    assert result.stdout == ""
    cli.run("get", "dataset", dataset_id, expect=4)   # removed again: the same command can be re-run


def test_list_pages_and_all(cli):
    prefix = uid("pg")
    for i in range(3):
        cli.run("create", "user", f"{prefix}-{i}", "--role", "user", "--email", f"{prefix}-{i}@example.com")
    query = ("--filter", f'email>="{prefix}" AND email<"{prefix}~"', "--order-by", "email desc")
    first = cli.run("list", "users", *query, "--page-size", "2", "-q")
    assert first.stdout.split() == [f"accounts/{cli.server.account_id}/users/{prefix}-{i}" for i in (2, 1)]
    assert "more results: add --all, or --page-token" in first.stderr
    token = first.stderr.split("--page-token ")[1].split()[0]
    rest = cli.names("list", "users", *query, "--page-size", "2", "--page-token", token)
    assert rest == [f"accounts/{cli.server.account_id}/users/{prefix}-0"]
    everything = cli.names("list", "users", *query, "--page-size", "2", "--all")
    assert everything == first.stdout.split() + rest


def test_both_word_orders_and_noun_spellings_agree(cli, base_model):
    a = cli.json("list", "models", "--all")
    assert a == cli.json("model", "list", "--all") == cli.json("list", "model", "--all")
    assert a == cli.json("models", "list", "--all")
    assert cli.api(f"/v1/accounts/{cli.server.account_id}/models?pageSize=200")["models"] == a
    assert cli.yaml("get", "model", base_model) == cli.json("model", "get", base_model)
    assert cli.names("get", "model", base_model) == [base_model]


def test_table_output_is_for_people(cli, base_model):
    out = cli.run("list", "models").stdout
    assert "STATE" in out and "READY" in out and base_model.rsplit("/", 1)[1] in out
    assert "ago" in out   # human times
    detail = cli.run("get", "model", base_model).stdout
    assert "HF_BASE_MODEL" in detail and "createTime" in detail


LIVE_DEPLOYMENT_FIELDS = ("state", "status", "replicaStats", "replicaCount", "updateTime", "etag")


def without_live_fields(deployment: dict) -> dict:
    return {k: v for k, v in deployment.items() if k not in LIVE_DEPLOYMENT_FIELDS}


def test_deployments_create_update_scale_delete_undelete_hard(cli, base_model):
    dep_id = uid("dep")
    created = cli.json("create", "deployment", base_model, "--deployment-id", dep_id, "--enable-addons",
                       "--min-replica-count", "0", "--max-replica-count", "2", "--max-context-length", "512",
                       "--display-name", "Chat")
    assert created["baseModel"] == base_model and created["enableAddons"] is True
    assert (created["minReplicaCount"], created["maxReplicaCount"]) == (0, 2)
    assert (created["maxContextLength"], created["displayName"]) == (512, "Chat")
    assert "autoscalingPolicy" not in created   # the server has no autoscaler, so the CLI sends no windows
    # The controller may tick between the two reads, so only what it never writes is compared.
    assert without_live_fields(cli.json("deployment", "get", dep_id)) == \
        without_live_fields(cli.api(f"/v1/{created['name']}"))
    assert cli.json("update", "deployment", dep_id, "--max-replica-count", "3")["maxReplicaCount"] == 3
    assert cli.json("scale", "deployment", dep_id, "--replica-count", "1")["desiredReplicaCount"] == 1
    cli.run("delete", "deployment", dep_id)
    assert created["name"] not in cli.names("list", "deployments", "--all")
    assert created["name"] in cli.names("list", "deployments", "--all", "--show-deleted")
    assert cli.json("undelete", "deployment", dep_id)["state"] != "DELETED"
    cli.run("delete", "deployment", dep_id, "--hard")
    cli.run("get", "deployment", dep_id, expect=4)
    cli.run("create", "deployment", base_model, "--scale-up-window", "45s", expect=2)   # no such flag any more


def test_load_and_unload_lora_and_the_deployed_model_verbs(cli, base_model, tmp_path):
    addon_id = uid("lora")
    cli.run("create", "model", addon_id, str(write_files(tmp_path / "a", tiny_addon_files())),
            "--base-model", base_model)
    dep = cli.json("create", "deployment", base_model, "--deployment-id", uid("dep"), "--enable-addons",
                   "--min-replica-count", "0")
    loaded = cli.json("load-lora", addon_id, "--deployment", dep["name"])
    assert loaded["model"].endswith(f"/models/{addon_id}") and loaded["deployment"] == dep["name"]
    assert loaded["state"] in ("DEPLOYING", "DEPLOYED")
    assert cli.json("get", "deployed-model", loaded["name"]) == cli.api(f"/v1/{loaded['name']}")
    assert loaded["name"] in cli.names("list", "deployed-models", "--filter", f'deployment="{dep["name"]}"')
    assert cli.json("update", "deployed-model", loaded["name"], "--public")["public"] is True
    cli.run("load-lora", addon_id, "--deployment", dep["name"], expect=3)   # loaded once per deployment
    cli.run("unload-lora", addon_id, "--deployment", dep["name"].rsplit("/", 1)[1])
    cli.run("get", "deployed-model", loaded["name"], expect=4)
    cli.run("unload-lora", addon_id, "--deployment", dep["name"], expect=4)


def test_sftj_create_get_list_cancel_resume_delete(cli, base_model, dataset):
    job_id = uid("job")
    job = cli.json("create", "sftj", "--dataset", dataset, "--base-model", base_model, "--output-model",
                   uid("out"), "--job-id", job_id, "--epochs", "2", "--learning-rate", "0.0002", "--lora-rank", "8",
                   "--max-context-length", "512", "--batch-size", "4096", "--early-stop")
    assert job["name"].endswith(f"/supervisedFineTuningJobs/{job_id}")
    assert (job["epochs"], job["learningRate"], job["loraRank"], job["maxContextLength"], job["batchSize"],
            job["earlyStop"]) == (2, 0.0002, 8, 512, 4096, True)
    got = cli.json("get", "sftj", job_id)
    assert got["name"] == job["name"] and got["dataset"] == dataset
    assert job["name"] in cli.names("list", "sftjs", "--all")
    assert cli.json("update", "sftj", job_id, "--display-name", "nightly run")["displayName"] == "nightly run"
    assert cli.json("cancel", "sftj", job_id)["state"] in ("JOB_STATE_CANCELLED", "JOB_STATE_CANCELLING")
    cli.run("create", "sftj", "--dataset", dataset, expect=3)   # neither --base-model nor --warm-start-from
    assert cli.json("supervised-fine-tuning-job", "get", job_id)["name"] == job["name"]


def test_quotas_and_usage(cli):
    quotas = cli.json("quota", "list")
    assert quotas == cli.api(f"/v1/accounts/{cli.server.account_id}/quotas")["quotas"]
    assert cli.json("get", "quota", "deployments") == next(q for q in quotas if q["quotaId"] == "deployments")
    assert cli.json("quota", "update", "deployments", "--max-value", "7")["maxValue"] == "7"
    assert cli.api(f"/v1/accounts/{cli.server.account_id}/quotas/deployments")["maxValue"] == "7"
    assert cli.json("usage") == cli.api(f"/v1/accounts/{cli.server.account_id}/usage")
    assert "dataset-bytes" in cli.run("usage").stdout


def test_error_classes_have_their_exit_codes(cli, base_model):
    assert cli.run("get", "model", "no-such-model", expect=4).stderr.startswith("Error: model ")
    contributor = user_key(cli.server, "inference-user")
    cli.run("create", "dataset", uid("ds"), __file__, "--api-key", contributor, expect=5)
    cli.run("get", "model", "Bad_ID!", expect=3)
    cli.run("list", "models", "--no-such-flag", expect=2)
    cli.run("list", "models", "-o", "xml", expect=2)
    cli.run("list", "models", "--base-url", "http://127.0.0.1:9", expect=9)
    dep_id = uid("dep")
    cli.run("create", "deployment", base_model, "--deployment-id", dep_id, "--min-replica-count", "0")
    cli.run("create", "deployment", base_model, "--deployment-id", dep_id, expect=6)
    cli.run("delete", "deployment", dep_id, "--hard")
