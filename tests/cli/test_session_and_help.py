"""Connection defaults (the data dir's credentials file, login's 0600 file, env, flags before
or after the verb), whoami, --help with an example on every command, shell completion, and
the real installed `fireplace` executable."""
from __future__ import annotations

import json
import os
import stat
import subprocess

from fireplace.cli.main import app
from tests.conftest import ADMIN_KEY, user_key
from tests.servers import FIREPLACE_BIN


def test_the_servers_credentials_file_is_enough(cli):
    """`fireplace serve` then `fireplace whoami`: no flags, no env."""
    me = cli.json("whoami")
    assert me["account"] == f"accounts/{cli.server.account_id}"
    assert me["role"] == "admin" and me["user"].startswith(f"accounts/{cli.server.account_id}/users/")
    assert me["baseUrl"] == cli.server.base_url


def test_flags_env_and_their_order(cli):
    other = cli.json("create", "account", "--email", "order-test@example.com")
    account = other["name"].split("/")[1]
    before = cli.json("--account", account, "get", "account")
    after = cli.json("get", "account", "--account", account)
    via_env = cli.json("get", "account", env={"FIREPLACE_ACCOUNT": account})
    assert before == after == via_env == other
    assert cli.json("-o", "json", "--account", account, "get", "account", "--account", cli.server.account_id)[
        "name"] == f"accounts/{cli.server.account_id}"    # the later flag wins
    cli.run("list", "models", env={"FIREPLACE_BASE_URL": "http://127.0.0.1:9"}, expect=9)
    cli.run("list", "models", "--base-url", cli.server.base_url, env={"FIREPLACE_BASE_URL": "http://127.0.0.1:9"})


def test_a_key_from_elsewhere_defaults_to_its_own_account(cli):
    """The credentials file's account goes with the file's key: FIREPLACE_API_KEY or --api-key of
    another account act in that account, not in the file's."""
    from tests.conftest import new_account
    account_id, key = new_account(cli.server)
    assert cli.json("get", "account", env={"FIREPLACE_API_KEY": key})["name"] == f"accounts/{account_id}"
    assert cli.json("whoami", "--api-key", key)["account"] == f"accounts/{account_id}"
    assert cli.json("get", "account")["name"] == f"accounts/{cli.server.account_id}"   # the file's own key


def test_login_writes_a_private_file_that_wins_then_logout(cli, tmp_path):
    key = user_key(cli.server, "contributor")
    login = tmp_path / "login" / "credentials"
    env = {"FIREPLACE_CONFIG": str(login), "FIREPLACE_HOME": str(tmp_path / "no-server-here")}
    result = cli.run("login", "--base-url", cli.server.base_url, input=key + "\n", env=env)
    assert "Logged in to" in result.stderr and "(contributor)" in result.stderr
    assert key not in result.stdout + result.stderr
    assert stat.S_IMODE(login.stat().st_mode) == 0o600
    stored = dict(line.split("=", 1) for line in login.read_text().splitlines())
    assert stored == {"FIREPLACE_BASE_URL": cli.server.base_url, "FIREPLACE_API_KEY": key,
                      "FIREPLACE_ACCOUNT_ID": cli.server.account_id}
    me = cli.json("whoami", env=env)
    assert me["role"] == "contributor"
    cli.run("login", "--api-key", "fw_wrong", "--base-url", cli.server.base_url, env=env, expect=5)
    assert stored == dict(line.split("=", 1) for line in login.read_text().splitlines())   # unchanged
    cli.run("logout", env=env)
    assert not login.exists()
    gone = cli.run("whoami", env=env, expect=5)   # no key anywhere now: said before any request
    assert "no API key" in gone.stderr


def _leaves(command, path=()):
    sub = getattr(command, "commands", None)
    if not sub:
        yield path, command
        return
    for name, child in sub.items():
        if not getattr(child, "hidden", False):
            yield from _leaves(child, (*path, name))


def test_every_command_has_help_with_an_example(cli):
    import typer.main
    root = typer.main.get_command(app)
    leaves = list(_leaves(root))
    assert len(leaves) > 60
    names = {" ".join(p) for p, _ in leaves}
    for expected in ("create deployment", "deployment create", "load-lora", "unload-lora", "create sftj",
                     "sftj cancel", "resume sftj", "quota update", "usage", "chat", "complete", "whoami", "login",
                     "upload model", "download model", "download dataset", "scale deployment", "undelete deployment",
                     "serve"):
        assert expected in names, expected
    for path, command in leaves:
        shown = (command.help or "") + (command.epilog or "")
        assert "Example" in shown and "fireplace " in shown.split("Example", 1)[1], path   # epilog or docstring
        assert (command.help or "").strip(), path
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        if path not in (("serve",), ("controller",)):   # processes, not API clients
            assert {"--output", "--account", "--base-url", "--api-key", "-q"} <= options, path
    for path in (("create", "deployment"), ("sftj", "create"), ("load-lora",), ("chat",), ("quota", "update")):
        out = cli.run(*path, "--help").stdout
        assert "Examples:" in out and "$ fireplace " in out and "--output" in out, path


def test_shell_completion_script_and_ids_from_the_server(cli):
    # typer finds the shell among the process's ancestors: run it from a bash (the `; true`
    # keeps bash from exec'ing it in place).
    env = {**os.environ, **{k: v for k, v in cli.environment().items() if v is not None}}
    done = subprocess.run(["bash", "-c", f"{FIREPLACE_BIN} --show-completion; true"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert "_FIREPLACE_COMPLETE" in done.stdout and "complete" in done.stdout, (done.stdout, done.stderr)
    cli.run("create", "model", "completion-probe", "--kind", "HF_BASE_MODEL")
    env = {**os.environ, **{k: v for k, v in cli.environment().items() if v is not None},
           "_FIREPLACE_COMPLETE": "complete_bash", "COMP_WORDS": "fireplace get model completion-p", "COMP_CWORD": "3"}
    for key in ("FIREPLACE_API_KEY", "FIREPLACE_BASE_URL", "FIREPLACE_ACCOUNT"):
        env.pop(key, None)
    out = subprocess.run([FIREPLACE_BIN], env=env, capture_output=True, text=True, timeout=60)
    assert "completion-probe" in out.stdout.split(), (out.stdout, out.stderr)


def test_the_installed_executable(cli, tmp_path):
    listed = cli.subprocess("list", "accounts", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert f"accounts/{cli.server.account_id}" in [a["name"] for a in json.loads(listed.stdout)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n[1, 2]\n')
    done = cli.subprocess("create", "dataset", "sub-bad", str(bad))
    assert done.returncode == 3 and "line 2: expected a JSON object" in done.stderr
    missing = cli.subprocess("get", "deployment", "nope")
    assert missing.returncode == 4 and "not found" in missing.stderr
    usage = cli.subprocess("frobnicate")
    assert usage.returncode == 2
    assert cli.subprocess("--api-key", ADMIN_KEY, "whoami", "-q").stdout.strip().startswith(
        f"accounts/{cli.server.account_id}/users/")
