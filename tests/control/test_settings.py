"""Settings from the environment: a typo under FIREPLACE_LIMIT_* / FIREPLACE_SERVING_* is an error
at start that names the variable (pydantic-settings alone would ignore it), through the real
`fireplace serve` process as well as in-process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fireplace.config import Limits, ServingSettings, Settings, SettingsError, load_settings


def test_known_variables_are_read(monkeypatch):
    monkeypatch.setenv("FIREPLACE_LIMIT_MAX_PAGE_SIZE", "77")
    monkeypatch.setenv("fireplace_serving_replica_max_loras", "3")  # read case-insensitively
    settings = Settings()
    assert settings.limits.max_page_size == 77 and settings.serving.replica_max_loras == 3


@pytest.mark.parametrize("variable,suggestion", [
    ("FIREPLACE_LIMIT_MAX_PAGESIZE", "FIREPLACE_LIMIT_MAX_PAGE_SIZE"),
    ("FIREPLACE_SERVING_REPLCA_MAX_LORAS", "FIREPLACE_SERVING_REPLICA_MAX_LORAS"),
    ("FIREPLACE_SERVING_NOTHING_LIKE_IT", None),
])
def test_an_unknown_variable_under_an_owned_prefix_is_refused(monkeypatch, variable, suggestion):
    monkeypatch.setenv(variable, "1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"unknown setting {variable}" in message
    assert (f"did you mean {suggestion}?" in message) if suggestion else "did you mean" not in message
    cls = Limits if "LIMIT" in variable else ServingSettings
    with pytest.raises(ValueError, match="unknown setting"):
        cls()


def test_other_fireplace_variables_are_not_settings(monkeypatch):
    """FIREPLACE_CPU_KERNELS, FIREPLACE_API_KEY (the client's) ... are read by their own code."""
    monkeypatch.setenv("FIREPLACE_CPU_KERNELS", "0")
    load_settings()


def test_fireplace_serve_exits_with_the_name(tmp_path):
    env = {**os.environ, "FIREPLACE_HOME": str(tmp_path), "FIREPLACE_LIMIT_MAX_BODY_BYTE": "10"}
    fireplace = Path(sys.executable).with_name("fireplace")  # the installed command
    proc = subprocess.run([str(fireplace), "serve", "--port", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert ("fireplace serve: unknown setting FIREPLACE_LIMIT_MAX_BODY_BYTE (did you mean "
            "FIREPLACE_LIMIT_MAX_BODY_BYTES?)") in proc.stderr
    assert "Traceback" not in proc.stderr
