"""Stores: in memory, and SQL (SQLite by default, Postgres)."""
