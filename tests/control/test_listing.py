"""Resource IDs and the list machinery.

Unit (no server): hypothesis over fireplace.ids (what is accepted, what never is) and the AIP-160
filter parser (random valid expressions parse, compile and select exactly the rows a Python
evaluation of the same expression selects; random garbage raises nothing but InvalidArgument).
End to end: paging, filtering and ordering over users through a real server.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select

from fireplace.api.filtering import FieldMap, as_int, as_str, compile_filter, parse_filter
from fireplace.errors import InvalidArgument
from fireplace.ids import ID_RE, account_id_from_email, is_valid_id, parse_name, validate_id
from tests.conftest import http

# ---------------------------------------------------------------- IDs

valid_ids = st.from_regex(ID_RE, fullmatch=True)


@given(valid_ids)
def test_valid_ids_are_accepted(value):
    assert validate_id(value) == value
    assert parse_name(f"accounts/acme/models/{value}", "models") == ("acme", value)
    assert parse_name(value, "models", account_id="acme") == ("acme", value)


@pytest.mark.parametrize("value", [
    "", "-", "a-", "-a", "9abc", "0", "A", "abC", "a_b", "a.b", "a b", "a/b", "../etc", "..", ".",
    "%2e%2e", "%2E%2E%2Fetc", "a\x00b", "\x00", "é", "caf\u00e9", "a\u0301", "\uff41", "a\n", " a",
    "a" * 64, "a" * 1000,
])
def test_hostile_ids_are_refused(value):
    assert not is_valid_id(value)
    with pytest.raises(InvalidArgument):
        validate_id(value)


@given(st.text(max_size=80))
def test_any_id_outside_the_alphabet_is_refused(value):
    ok = (0 < len(value) <= 63 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in value)
          and value[0].isalpha() and not value.endswith("-"))
    assert is_valid_id(value) == ok
    if not ok:
        with pytest.raises(InvalidArgument):
            validate_id(value)


@given(st.text(max_size=80))
def test_names_never_smuggle_a_path(value):
    """Whatever follows accounts/a/models/, a parsed name yields only valid IDs."""
    try:
        account, resource = parse_name(f"accounts/acme/models/{value}", "models")
    except InvalidArgument:
        return
    assert is_valid_id(account) and is_valid_id(resource) and resource == value


emails = st.builds(lambda local, domain: f"{local}@{domain}",
                   st.text(min_size=0, max_size=70), st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True))


@given(emails)
def test_account_id_from_any_email_is_valid(email):
    assert is_valid_id(account_id_from_email(email))


@given(emails, emails)
def test_account_ids_of_different_emails_differ(a, b):
    if a.strip().lower() != b.strip().lower():
        assert account_id_from_email(a) != account_id_from_email(b)
    else:
        assert account_id_from_email(a) == account_id_from_email(b)


@given(emails)
def test_account_id_avoids_taken_ids(email):
    taken: set[str] = set()
    for _ in range(10):
        new = account_id_from_email(email, taken)
        assert is_valid_id(new) and new not in taken
        taken.add(new)


# ---------------------------------------------------------------- filter parser

_meta = MetaData()
_things = Table("things", _meta, Column("id", Integer, primary_key=True), Column("name", String),
                Column("role", String), Column("size", Integer))
FIELDS: FieldMap = {"name": (_things.c.name, as_str), "role": (_things.c.role, as_str),
                    "size": (_things.c.size, as_int)}
WORDS = ["a", "b", "ab", "ba", "c"]
ROWS = [{"id": i, "name": WORDS[i % 5], "role": WORDS[(i * 3) % 5], "size": i % 7} for i in range(40)]
_engine = create_engine("sqlite://")
_meta.create_all(_engine)
with _engine.begin() as _conn:
    _conn.execute(insert(_things), ROWS)

OPS = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
       ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}

# AST: ("cmp", field, op, value) | ("not", x) | ("and", [x..]) | ("or", [x..])
comparisons = st.one_of(
    st.tuples(st.just("cmp"), st.sampled_from(["name", "role"]), st.sampled_from(list(OPS)),
              st.sampled_from(WORDS)),
    st.tuples(st.just("cmp"), st.just("size"), st.sampled_from(list(OPS)), st.integers(-1, 8)),
)
expressions = st.recursive(comparisons, lambda inner: st.one_of(
    st.tuples(st.just("not"), inner),
    st.tuples(st.just("and"), st.lists(inner, min_size=2, max_size=3)),
    st.tuples(st.just("or"), st.lists(inner, min_size=2, max_size=3)),
), max_leaves=8)


def render(node) -> str:
    """Text with only the parentheses precedence needs (NOT > AND > OR), so precedence is tested."""
    kind = node[0]
    if kind == "cmp":
        _, field, op, value = node
        shown = f'"{value}"' if isinstance(value, str) else str(value)
        return f"{field} {op} {shown}"
    if kind == "not":
        inner = render(node[1])
        return f"NOT {inner}" if node[1][0] in ("cmp", "not") else f"NOT ({inner})"
    if kind == "and":
        return " AND ".join(render(i) if i[0] != "or" else f"({render(i)})" for i in node[1])
    return " OR ".join(render(i) for i in node[1])


def evaluate(node, row) -> bool:
    kind = node[0]
    if kind == "cmp":
        return OPS[node[2]](row[node[1]], node[3])
    if kind == "not":
        return not evaluate(node[1], row)
    results = [evaluate(i, row) for i in node[1]]
    return all(results) if kind == "and" else any(results)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(expressions)
def test_valid_filters_select_what_they_say(node):
    text = render(node)
    where = compile_filter(parse_filter(text), FIELDS)
    with _engine.connect() as conn:
        got = {r.id for r in conn.execute(select(_things.c.id).where(where))}
    assert got == {r["id"] for r in ROWS if evaluate(node, r)}, text


@pytest.mark.parametrize("text", ['name = "a"', "name='a'", "size>3", "(role = a)", "NOT name != a",
                                  'name = "q\\"x"', "size >= -1 AND size <= 8", "-size < 2"])
def test_filter_forms_parse(text):
    compile_filter(parse_filter(text), FIELDS)


@pytest.mark.parametrize("text", ["name", "name =", "= a", "name : a", "name = a AND", "(name = a",
                                  "name = a)", "name ~ a", "other = a", "size = abc", "name = a b",
                                  "(" * 100 + "name = a" + ")" * 100, "name = a OR " * 200 + "name = a"])
def test_bad_filters_are_a_clear_400(text):
    with pytest.raises(InvalidArgument):
        compile_filter(parse_filter(text), FIELDS)


garbage = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["name", "size", "role", "=", "!=", "<", ">", "AND", "OR", "NOT", "(", ")",
                              '"x"', "'y'", "3", "-", "\\", '"', ":", "*", "x.y", "1e9", " "]),
             max_size=30).map(" ".join),
)


@settings(max_examples=500)
@given(garbage)
def test_garbage_filters_raise_only_invalid_argument(text):
    try:
        where = compile_filter(parse_filter(text), FIELDS)
    except InvalidArgument:
        return
    if where is not None:
        with _engine.connect() as conn:
            conn.execute(select(_things.c.id).where(where)).all()


# ---------------------------------------------------------------- end to end over users

@pytest.fixture(scope="module")
def listed(server):
    """An account of its own with 13 users of known roles and names."""
    from tests.conftest import new_account
    account_id, key = new_account(server)
    names = []
    with http(server, key) as c:
        for i in range(12):
            user_id = f"lu-{i:02d}"
            role = ("user", "contributor", "admin", "inference-user")[i % 4]
            r = c.post(f"/v1/accounts/{account_id}/users", params={"userId": user_id},
                       json={"role": role, "email": f"{user_id}@example.com", "displayName": f"x{i % 3}"})
            assert r.status_code == 200, r.text
            names.append(r.json()["name"])
    return account_id, key


def test_page_walk_returns_every_user_once_in_stable_order(server, listed):
    from tests.conftest import sdk
    account_id, key = listed
    client = sdk(server, key, account_id)
    walked = [u.name for u in client.users.list(page_size=5)]
    assert len(walked) == 13 and len(set(walked)) == 13
    assert walked == sorted(walked)
    assert walked == [u.name for u in client.users.list(page_size=5)]
    first = client.users.list(page_size=5)
    assert len(first.users) == 5 and first.next_page_token
    assert [u.name for u in client.users.list(page_size=200)] == walked


def _names(server, key, account_id, **params) -> list[str]:
    with http(server, key) as c:
        r = c.get(f"/v1/accounts/{account_id}/users", params=params)
        assert r.status_code == 200, r.text
        return [u["name"].rsplit("/", 1)[1] for u in r.json()["users"]]


def test_filters_over_users(server, listed):
    account_id, key = listed
    assert _names(server, key, account_id, filter='role="contributor"') == ["lu-01", "lu-05", "lu-09"]
    admins = _names(server, key, account_id, filter='role = "admin" AND NOT display_name = "x2"')
    # lu-02 is the admin named x2; the account's own admin (dev-...) sorts first.
    assert len(admins) == 3 and admins[0].startswith("dev-") and admins[1:] == ["lu-06", "lu-10"]
    assert _names(server, key, account_id, filter='role = "user" OR role = "inference-user"') == \
        ["lu-00", "lu-03", "lu-04", "lu-07", "lu-08", "lu-11"]
    assert _names(server, key, account_id, filter='user_id > "lu-09" AND role != "admin"') == ["lu-11"]
    assert _names(server, key, account_id, filter='(role = "user" OR role = "admin") AND display_name = "x0"') == \
        ["lu-00", "lu-06"]


def test_order_by_create_time_desc(server, listed):
    account_id, key = listed
    newest_first = _names(server, key, account_id, orderBy="create_time desc", filter='user_id > "lu"')
    assert newest_first == [f"lu-{i:02d}" for i in range(11, -1, -1)]
    oldest_first = _names(server, key, account_id, orderBy="create_time", filter='user_id > "lu"')
    assert oldest_first == newest_first[::-1]


def test_filter_by_time_and_pages_with_a_filter(server, listed):
    account_id, key = listed
    past = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    everyone = _names(server, key, account_id, filter=f'create_time > "{past}"')
    assert len(everyone) == 13
    with http(server, key) as c:
        seen, token = [], ""
        while True:
            r = c.get(f"/v1/accounts/{account_id}/users",
                      params={"filter": 'role != "admin"', "pageSize": 4, "pageToken": token})
            body = r.json()
            seen += [u["name"] for u in body["users"]]
            token = body.get("nextPageToken", "")
            if not token:
                break
        assert len(seen) == len(set(seen)) == 9


@pytest.mark.parametrize("params,needle", [
    ({"filter": 'shoe_size = "9"'}, "shoe_size"),
    ({"filter": "role ~ admin"}, "filter"),
    ({"filter": "role:admin"}, "filter"),
    ({"orderBy": "shoe_size desc"}, "shoe_size"),
    ({"orderBy": "role sideways"}, "orderBy"),
    ({"pageToken": "not-a-token"}, "pageToken"),
    ({"pageToken": uuid.uuid4().hex}, "pageToken"),
    ({"pageSize": -1}, "pageSize"),
])
def test_bad_list_requests_are_400_naming_the_problem(server, listed, params, needle):
    account_id, key = listed
    with http(server, key) as c:
        r = c.get(f"/v1/accounts/{account_id}/users", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 3 and needle in r.json()["message"]
    assert r.headers["x-should-retry"] == "false"


def test_page_token_is_bound_to_its_filter(server, listed):
    account_id, key = listed
    with http(server, key) as c:
        token = c.get(f"/v1/accounts/{account_id}/users", params={"pageSize": 2}).json()["nextPageToken"]
        r = c.get(f"/v1/accounts/{account_id}/users", params={"pageSize": 2, "pageToken": token,
                                                               "filter": 'role = "admin"'})
    assert r.status_code == 400 and "pageToken" in r.json()["message"]


def test_page_size_is_coerced_to_200(server, listed):
    account_id, key = listed
    with http(server, key) as c:
        r = c.get(f"/v1/accounts/{account_id}/users", params={"pageSize": 10**9})
    assert r.status_code == 200 and len(r.json()["users"]) == 13
