"""The SQL store: one SQLite file in WAL mode by default, or Postgres, through SQLAlchemy 2 Core.

One concept a module: `location` (where the database lives, `open_store`), `schema` (the tables;
their DDL is in `tether.adapters.store.migrations`), `database` (connections, transactions),
`writer` (the group-commit writer, the hot path), `runs` (the run log and index), `leases`,
`controls` (breakpoints, cancel requests) and `objects` (the documents), composed by `store`
into `SqlStore`.
"""

from tether.adapters.store.sql.database import StoreError
from tether.adapters.store.sql.location import default_url, open_store, tether_home
from tether.adapters.store.sql.schema import INFO_COLUMNS
from tether.adapters.store.sql.store import SqlStore

__all__ = ["INFO_COLUMNS", "SqlStore", "StoreError", "default_url", "open_store", "tether_home"]
