"""Alembic migration scripts, linear and named."""
