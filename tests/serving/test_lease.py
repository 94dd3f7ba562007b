"""The controller lease on both databases: one holder at a time, renewal, takeover after expiry."""
from __future__ import annotations

import time

import pytest

from fireplace.db.engine import make_engine, make_session_factory
from fireplace.db.migrate import upgrade
from fireplace.orchestration.lease import Lease
from tests.conftest import _require_postgres
from tests.servers import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    if request.param == "postgres":
        _require_postgres()
        url = create_pg_database()
    engine = make_engine(url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()
    if request.param == "postgres":
        drop_pg_database(url)


def test_one_holder_renewal_and_takeover(factory):
    a, b = Lease(factory, "controller", "a", ttl_s=1.0), Lease(factory, "controller", "b", ttl_s=1.0)
    assert a.try_acquire()
    assert not b.try_acquire()
    assert a.try_acquire()          # renewal
    time.sleep(1.2)
    assert b.try_acquire()          # a stopped renewing: b takes over
    assert not a.try_acquire()
    b.release()
    assert a.try_acquire()          # released: free at once
