"""Every command of the README's "Quickstart with the CLI" section, run as written: each ```bash
block is one `bash -euo pipefail` script with the installed `fireplace` first on PATH, against
a real server serving the bundled model (whose data dir holds the credentials the CLI reads, as
after `make run`). Lines that start the server (`make run`, `fireplace serve`) are what the
fixture already did, so they are the only ones not run."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli.helpers import CLEARED
from tests.servers import FIREPLACE_BIN

pytestmark = pytest.mark.slow
# FIREPLACE_TEST_README runs a draft instead of the repository's README.md.
README = Path(os.environ.get("FIREPLACE_TEST_README") or Path(__file__).resolve().parents[2] / "README.md")
SECTION = "Quickstart with the CLI"
SERVER_START = re.compile(r"^\s*(make run|fireplace serve)\b")


def readme_blocks(text: str) -> list[str]:
    """The ```bash blocks between the section's heading and the next heading of its level or above."""
    heading = re.search(rf"^(#+) {re.escape(SECTION)}\s*$", text, re.M)
    if heading is None:
        return []
    level = len(heading.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[heading.end():], re.M)
    body = text[heading.end(): heading.end() + end.start() if end else len(text)]
    return re.findall(r"^```bash\n(.*?)^```", body, re.M | re.S)


def runnable(block: str) -> str:
    return "\n".join(line for line in block.splitlines() if not SERVER_START.match(line))


def test_the_section_is_found_and_parsed():
    sample = (f"# T\n## {SECTION}\ntext\n```bash\nmake run\n```\n```bash\nfireplace whoami\n"
              "fireplace list models\n```\n```python\nx\n```\n## Next\n```bash\nnot this\n```\n")
    blocks = readme_blocks(sample)
    assert blocks == ["make run\n", "fireplace whoami\nfireplace list models\n"]
    assert runnable(blocks[0]) == "" and runnable(blocks[1]) == "fireplace whoami\nfireplace list models"


def test_readme_cli_quickstart_runs(serving_server, tmp_path):
    blocks = readme_blocks(README.read_text())
    if not blocks:
        pytest.skip(f"README.md has no '{SECTION}' section yet")
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update({"FIREPLACE_HOME": str(serving_server.home), "FIREPLACE_CONFIG": str(tmp_path / "login"),
                "PATH": f"{Path(FIREPLACE_BIN).parent}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "160"})
    for block in blocks:
        script = runnable(block)
        if not script.strip():
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"README block failed ({done.returncode}):\n{script}\n" \
                                     f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
