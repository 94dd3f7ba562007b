"""Apply Alembic migrations at start (idempotent; concurrent starters serialize on the DB)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    import fireplace.db.all_tables  # noqa: F401  (complete metadata)
    if not any((MIGRATIONS_DIR / "versions").glob("*.py")):
        # Development only, before the first revision is generated.
        from fireplace.db.base import Base
        Base.metadata.create_all(engine)
        return
    command.upgrade(alembic_config(engine), "head")
