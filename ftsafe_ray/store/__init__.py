"""Parquet tables of a run: schemas, sharded atomic writes, done-key lookup."""

from ftsafe_ray.store.lock import RunLock
from ftsafe_ray.store.run_dir import RunStore
from ftsafe_ray.store.schemas import FINETUNES, GENERATIONS, JUDGMENTS, SCHEMA_VERSION
from ftsafe_ray.store.table import DONE_STATUSES, DamagedShardWarning, ParquetTable, ShardBuffer

__all__ = [
    "DONE_STATUSES",
    "FINETUNES",
    "GENERATIONS",
    "JUDGMENTS",
    "SCHEMA_VERSION",
    "DamagedShardWarning",
    "ParquetTable",
    "RunLock",
    "RunStore",
    "ShardBuffer",
]
