"""First start puts the bundled SmolLM2 into the public catalog, readable by every account."""
from __future__ import annotations

import time

from tests.conftest import new_account, sdk


def test_bundled_smollm2_is_in_the_public_catalog(fresh_server, unique):
    server = fresh_server("sqlite", extra_env={"FIREPLACE_IMPORT_CATALOG": "true"})
    client = sdk(server)
    deadline = time.monotonic() + 600
    model = None
    while time.monotonic() < deadline:
        try:
            model = client.models.get("smollm2-135m-instruct", account_id="fireplace")
            if model.state == "READY":
                break
        except Exception:
            pass
        time.sleep(1)
    assert model is not None and model.state == "READY", server.log_text()[-3000:]
    assert model.kind == "HF_BASE_MODEL"
    assert 130_000_000 < int(model.base_model_details.parameter_count) < 140_000_000

    account_id, key = new_account(server)
    other = sdk(server, key, account_id)
    assert other.models.get("smollm2-135m-instruct", account_id="fireplace").name == \
        "accounts/fireplace/models/smollm2-135m-instruct"
    deployment = other.deployments.create(base_model="accounts/fireplace/models/smollm2-135m-instruct",
                                          deployment_id=unique("smol"), enable_addons=True)
    assert deployment.state == "CREATING"
