"""Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL,
and applying them twice (a restart, or two servers starting together) changes nothing."""
from __future__ import annotations

import pytest

from fireplace.db.engine import make_engine
from fireplace.db.migrate import pending_changes, upgrade
from tests.conftest import _require_postgres
from tests.servers import create_pg_database, drop_pg_database


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migrations_match_the_tables_in_code(backend, tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    if backend == "postgres":
        _require_postgres()
        url = create_pg_database()
    engine = make_engine(url)
    try:
        upgrade(engine)
        upgrade(engine)
        assert pending_changes(engine) == []
    finally:
        engine.dispose()
        if backend == "postgres":
            drop_pg_database(url)
