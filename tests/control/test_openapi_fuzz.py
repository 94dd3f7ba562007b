"""Schemathesis over /openapi.json against a real server: no server errors, every status and
body as documented (the one error shape included), on SQLite and PostgreSQL."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_failures(server, tmp_path):
    junit = tmp_path / "junit.xml"
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server.base_url}/openapi.json",
           "-H", f"Authorization: Bearer {server.api_key}", "--checks", CHECKS,
           "--max-examples", "10", "--seed", "20261125", "--phases", "examples,coverage,fuzzing",
           "--no-shrink", "--no-color", "--workers", "2", "--request-timeout", "30",
           "--report", "junit", "--report-junit-path", str(junit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    failures = [(case.get("name"), f.get("message") or (f.text or "")[:500])
                for case in ET.parse(junit).iter("testcase") for f in case.findall("failure")]
    assert not failures, "\n".join(f"{name}: {msg}" for name, msg in failures)
    tested = sum(1 for _ in ET.parse(junit).iter("testcase"))
    assert tested >= 50, proc.stdout[-3000:]  # every operation was exercised
    assert "Internal Server Error" not in server.log_text()
