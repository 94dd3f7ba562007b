"""Resumable `create model ID DIR` / `upload model ID DIR` against a real server: an upload
interrupted after its first file, run again as the same command, sends only the files the server
does not hold intact, and the model ends READY with exactly the directory's bytes. The
interruption is a Ctrl-C raised by a wrapper around the client's real PUT (every PUT it lets
through is real); the same wrapper records which files went over the wire."""
from __future__ import annotations

import uuid

import pytest

from fireplace.client import transfers
from tests.cli.helpers import write_files
from tests.control.helpers_resources import tiny_addon_files, tiny_base_files


class Puts:
    """Wraps transfers.put_file: records each file sent; with stop_after=N, Ctrl-C after N."""

    def __init__(self, real, stop_after: int | None = None):
        self.real, self.stop_after, self.sent = real, stop_after, []

    def __call__(self, fp, url, path, progress=transfers._no_progress):
        self.real(fp, url, path, progress)
        self.sent.append(path.name)
        if self.stop_after is not None and len(self.sent) >= self.stop_after:
            raise KeyboardInterrupt


REAL_PUT = transfers.put_file


@pytest.fixture
def puts(monkeypatch):
    def install(stop_after: int | None = None) -> Puts:
        recorder = Puts(REAL_PUT, stop_after)
        monkeypatch.setattr(transfers, "put_file", recorder)
        return recorder
    return install


@pytest.fixture
def model_dir(tmp_path):
    return write_files(tmp_path / "model", tiny_base_files())


def test_create_model_resumes_after_an_interruption(cli, puts, model_dir, tmp_path):
    names = sorted(p.name for p in model_dir.iterdir())
    assert len(names) >= 2
    model_id = f"resume-{uuid.uuid4().hex[:8]}"
    first = puts(stop_after=1)
    cli.run("create", "model", model_id, str(model_dir), expect=130)   # interrupted
    assert first.sent == names[:1]
    name = f"accounts/{cli.server.account_id}/models/{model_id}"
    assert cli.api(f"/v1/{name}")["state"] == "UPLOADING"

    again = puts()
    result = cli.run("create", "model", model_id, str(model_dir), "-o", "json")
    assert again.sent == names[1:]                                     # only the rest went over the wire
    assert f"{names[0]}: already uploaded, skipped" in result.stderr and "resuming" in result.stderr
    assert cli.api(f"/v1/{name}")["state"] == "READY"
    cli.run("download", "model", model_id, str(tmp_path / "back"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "back").iterdir()} == \
        {p.name: p.read_bytes() for p in model_dir.iterdir()}
    cli.run("create", "model", model_id, str(model_dir), expect=6)     # READY: an ordinary conflict


def test_upload_model_resends_a_file_that_changed(cli, puts, model_dir):
    """Same name and size, other bytes: the SHA-256 differs, so the file goes again."""
    names = sorted(p.name for p in model_dir.iterdir())
    model_id = f"resume-{uuid.uuid4().hex[:8]}"
    puts(stop_after=1)
    cli.run("create", "model", model_id, str(model_dir), expect=130)
    changed = model_dir / names[0]
    data = bytearray(changed.read_bytes())
    assert names[0].endswith(".json") and data[:2] == b"{\n"
    data[1] = ord(" ")                                                 # JSON still, same size
    changed.write_bytes(bytes(data))
    again = puts()
    cli.run("upload", "model", model_id, str(model_dir))
    assert again.sent == names
    assert cli.api(f"/v1/accounts/{cli.server.account_id}/models/{model_id}")["state"] == "READY"


def test_create_model_does_not_take_over_a_different_model(cli, puts, model_dir, tmp_path):
    """An UPLOADING model of another kind is not this command's to resume."""
    base_id, model_id = f"base-{uuid.uuid4().hex[:8]}", f"resume-{uuid.uuid4().hex[:8]}"
    cli.run("create", "model", base_id, str(model_dir))
    cli.run("create", "model", model_id, "--kind", "HF_BASE_MODEL")            # UPLOADING, no files
    adapter = write_files(tmp_path / "adapter", tiny_addon_files())
    sent = puts()
    cli.run("create", "model", model_id, str(adapter), "--base-model", base_id, expect=6)
    assert sent.sent == []
