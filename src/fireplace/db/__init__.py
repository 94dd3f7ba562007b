"""Metadata database: SQLAlchemy 2 tables (one tables.py per resource), Alembic migrations."""
