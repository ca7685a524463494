"""The exporter's configuration, read once from AGENTRT_EXPORT_* environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.kit.config import ConfigError, env_int, env_str


@dataclass(frozen=True)
class ExportConfig:
    """Where the exporter sends the events of the global stream; every target is off by default."""

    kafka_bootstrap: str
    """AGENTRT_EXPORT_KAFKA_BOOTSTRAP: comma-separated host:port of Kafka brokers; empty
    means no Kafka export."""
    kafka_topic_prefix: str
    """AGENTRT_EXPORT_KAFKA_TOPIC_PREFIX: events go to topic `{prefix}events`
    (default `agentrt.`)."""
    kafka_partitions: int
    """AGENTRT_EXPORT_KAFKA_PARTITIONS: partitions of the topic when the exporter creates
    it (default 1); an existing topic is used as it is."""
    redis_url: str
    """AGENTRT_EXPORT_REDIS_URL: an external Redis to copy the events to; empty means none."""
    redis_stream_prefix: str
    """AGENTRT_EXPORT_REDIS_STREAM_PREFIX: events go to stream `{prefix}:events`
    (default `agentrt.export`)."""
    redis_maxlen: int
    """AGENTRT_EXPORT_REDIS_MAXLEN: the exported stream is trimmed to about this many
    entries (default 1000000)."""
    group: str
    """AGENTRT_EXPORT_GROUP: the consumer group on the global stream that holds the
    exporter's position (default `agentrt-export`)."""
    consumer: str
    """AGENTRT_EXPORT_CONSUMER: the exporter's name in that group (default `exporter`);
    a restarted exporter of the same name first re-sends what it had not confirmed."""
    batch_size: int
    """AGENTRT_EXPORT_BATCH_SIZE: events read, sent and acknowledged at a time (default 500)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExportConfig:
        config = cls(
            kafka_bootstrap=env_str("AGENTRT_EXPORT_KAFKA_BOOTSTRAP", "", env),
            kafka_topic_prefix=env_str("AGENTRT_EXPORT_KAFKA_TOPIC_PREFIX", "agentrt.", env),
            kafka_partitions=env_int("AGENTRT_EXPORT_KAFKA_PARTITIONS", 1, env, minimum=1),
            redis_url=env_str("AGENTRT_EXPORT_REDIS_URL", "", env),
            redis_stream_prefix=env_str(
                "AGENTRT_EXPORT_REDIS_STREAM_PREFIX", "agentrt.export", env
            ),
            redis_maxlen=env_int("AGENTRT_EXPORT_REDIS_MAXLEN", 1_000_000, env, minimum=1),
            group=env_str("AGENTRT_EXPORT_GROUP", "agentrt-export", env),
            consumer=env_str("AGENTRT_EXPORT_CONSUMER", "exporter", env),
            batch_size=env_int("AGENTRT_EXPORT_BATCH_SIZE", 500, env, minimum=1),
        )
        for target in filter(None, config.kafka_bootstrap.split(",")):
            host, sep, port = target.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(
                    f"AGENTRT_EXPORT_KAFKA_BOOTSTRAP: expected host:port[,host:port...], "
                    f"got {config.kafka_bootstrap!r}"
                )
        return config

    @property
    def enabled(self) -> bool:
        """Whether any export target is configured."""
        return bool(self.kafka_bootstrap or self.redis_url)

    @property
    def kafka_topic(self) -> str:
        return f"{self.kafka_topic_prefix}events"
