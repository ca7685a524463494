"""The Kafka export: each event a record keyed by its job id, so a job's events keep their order."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agentrt.common.v1.common_pb2 import RuntimeEvent
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from services.export.source import type_label
from services.kit.events import job_id_of

_log = logging.getLogger(__name__)


def record_headers(event: RuntimeEvent) -> list[tuple[str, bytes]]:
    """The headers a consumer reads without decoding the record: the event id (to
    deduplicate, as delivery is at least once) and the dotted event type."""
    headers = [("event-id", event.id.encode())]
    if (label := type_label(event)) is not None:
        headers.append(("event-type", label))
    return headers


class KafkaSink:
    """Produces events to one topic: value the serialized RuntimeEvent, key its job id.

    Records of one key go to one partition, in the order sent; `send` returns once the
    brokers acknowledged every record (acks=all), so the caller may then confirm them.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int = 1) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._partitions = partitions
        self._producer: AIOKafkaProducer | None = None

    @property
    def name(self) -> str:
        return f"kafka topic {self._topic}"

    async def start(self) -> None:
        await self._ensure_topic()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", linger_ms=5, client_id="agentrt-export"
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def send(self, events: Sequence[RuntimeEvent]) -> None:
        if self._producer is None:
            raise RuntimeError("the Kafka sink is not started")
        sent = [
            await self._producer.send(
                self._topic,
                value=event.SerializeToString(),
                key=job_id_of(event.job).encode(),
                headers=record_headers(event),
            )
            for event in events
        ]
        for delivery in sent:
            await delivery

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self._topic, self._partitions, 1)])
            _log.info("created Kafka topic %s (%d partitions)", self._topic, self._partitions)
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()
