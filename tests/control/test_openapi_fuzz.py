"""Schemathesis over /openapi.json against a real server, every control-plane operation, with
all checks (server errors, documented statuses, bodies and headers, schema-valid data
accepted and invalid data refused, Allow on 405, undeclared methods, auth ignored nowhere,
use-after-free and resource availability through the stateful links), a fixed seed, on
SQLite and PostgreSQL. Inference paths belong to the gateway's own tests. Bounded: a few
examples per operation, one worker; about a minute per backend."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

CONFIG = Path(__file__).with_name("schemathesis.toml")
CONTROL_PLANE = r"^/(v1/accounts|v1/uploads|v1/downloads|healthz|readyz)"


def test_schemathesis_finds_no_failures(server, tmp_path):
    junit = tmp_path / "junit.xml"
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(CONFIG), "run",
           f"{server.base_url}/openapi.json", "-H", f"Authorization: Bearer {server.api_key}",
           "--checks", "all", "--include-path-regex", CONTROL_PLANE,
           "--max-examples", "5", "--seed", "20261125", "--phases", "examples,coverage,fuzzing,stateful",
           "--no-shrink", "--no-color", "--workers", "1", "--request-timeout", "30", "--max-time", "75",
           "--report", "junit", "--report-junit-path", str(junit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    failures = [(case.get("name"), f.get("message") or (f.text or "")[:500])
                for case in ET.parse(junit).iter("testcase") for f in case.findall("failure")]
    assert not failures, "\n".join(f"{name}: {msg}" for name, msg in failures) + proc.stdout[-2000:]
    errors = [(case.get("name"), (e.get("message") or e.text or "")[:300])
              for case in ET.parse(junit).iter("testcase") for e in case.findall("error")]
    assert not errors, errors
    tested = sum(1 for _ in ET.parse(junit).iter("testcase"))
    assert tested >= 55, proc.stdout[-3000:]  # every control-plane operation was exercised
    assert "Stateful" in proc.stdout, proc.stdout[-2000:]
    log = server.log_text()
    assert "Internal Server Error" not in log and "unhandled error on" not in log, log[-3000:]
