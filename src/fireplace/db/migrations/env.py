"""Alembic environment: runs against the engine handed over in config.attributes."""
from alembic import context

import fireplace.db.all_tables  # noqa: F401
from fireplace.db.base import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
