"""The embedded durable log: sharded segment files with group commit, recovery, retention, dedup.

``Store`` is the entry point; the storage format and its guarantees are described
in ``docs/storage.md`` and at the top of ``record.py`` and ``segment.py``.
"""

from tidings.log.files import FileSystem
from tidings.log.shard import ShardStats
from tidings.log.store import Store
from tidings.log.types import AppendResult, RetentionPolicy, StoredRecord

__all__ = ["AppendResult", "FileSystem", "RetentionPolicy", "ShardStats", "Store", "StoredRecord"]
