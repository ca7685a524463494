"""Event export: the global event stream copied to Kafka and to external Redis Streams."""

from __future__ import annotations

from services.export.config import ExportConfig
from services.export.exporter import EventSink, Exporter, run_exporter
from services.export.kafka import KafkaSink
from services.export.redis_streams import ExportedEventReader, RedisStreamSink
from services.export.source import GlobalStreamGroup

__all__ = [
    "EventSink",
    "ExportConfig",
    "ExportedEventReader",
    "Exporter",
    "GlobalStreamGroup",
    "KafkaSink",
    "RedisStreamSink",
    "run_exporter",
]
