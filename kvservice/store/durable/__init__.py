"""The durable backend: the memory store kept on local disk (--data-dir), standard library
only.

- `database.py`: the file layer, the one module that touches SQLite, behind a Protocol a
  test can swap (the power-cut and full-disk tests run SQLite on a VFS of their own);
- `journal.py`: the data directory, its lock, the schema, recovery, compaction and backups;
- `store.py`: `DurableStore`, the Store port over a `MemoryStore` and a writer thread that
  commits every queued write in one transaction (group commit).

Why SQLite in WAL mode through `sqlite3`, and not a log of our own: its recovery of a torn
WAL tail (checksummed, salted frames) is the most tested there is, and it comes with Python.
docs/durability.md is the manual: the --fsync policies, recovery, faults, backups.
"""

from kvservice.store.durable.journal import DataDirError, backup
from kvservice.store.durable.store import DurableStore

__all__ = ["DataDirError", "DurableStore", "backup"]
