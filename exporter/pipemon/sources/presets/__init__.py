"""Queue presets: one per queue library, plus the generic column mapping."""

from __future__ import annotations

from pipemon.sources.presets.base import QueueSchema
from pipemon.sources.presets.generic import GenericSchema
from pipemon.sources.presets.graphile_worker import GraphileWorkerSchema
from pipemon.sources.presets.pgboss import PgBossSchema
from pipemon.sources.presets.procrastinate import ProcrastinateSchema

PRESETS: dict[str, type[QueueSchema]] = {
    "generic": GenericSchema,
    "procrastinate": ProcrastinateSchema,
    "pgboss": PgBossSchema,
    "graphile_worker": GraphileWorkerSchema,
}
