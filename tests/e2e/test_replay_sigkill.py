"""End to end: the replay service, its own process on Redis Streams, is killed with SIGKILL
in the middle of a load of jobs and started again; afterwards every job has a complete
recording, its events exactly the job's history, none twice.

The rest of the system runs in this process on PostgreSQL and Redis, under a load of 500
jobs (18 to 40 s on a 2-core machine; AGENTRT_TEST_REPLAY_JOBS sets another count)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agentrt.client import Client
from agentrt.errors import NotFoundError
from agentrt.replay.v1 import replay_pb2

from services.dev import LocalSystem, local_system
from services.replay.history import JobsServiceHistory
from tests.e2e.processes import AGENTRT, free_port, wait_serving

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

JOBS = int(os.environ.get("AGENTRT_TEST_REPLAY_JOBS", "500"))
R = replay_pb2
WAIT = 60.0


class ReplayProcess:
    """`agentrt serve replay` on SQLite, recording the system's Redis stream."""

    def __init__(self, system: LocalSystem, tmp_path: Path) -> None:
        config = system.infra.config
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "AGENTRT_DATA_DIR": str(tmp_path / "replay-data"),
            "AGENTRT_REDIS_URL": config.redis_url,
            "AGENTRT_REDIS_PREFIX": config.redis_prefix,
            "AGENTRT_LISTEN_ADDRESS": self.address,
            **{
                f"AGENTRT_{service.upper()}_ADDRESS": system.endpoint
                for service in ("jobs", "policy", "engine")
            },
        }
        self.env.pop("AGENTRT_DATABASE_URL", None)
        self.logs = tmp_path / "replay.log"
        subprocess.run([AGENTRT, "migrate", "replay"], env=self.env, check=True, timeout=60)
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        with self.logs.open("ab") as log:
            self.process = subprocess.Popen(
                [AGENTRT, "serve", "replay"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_serving(self.address, "agentrt.replay.v1.ReplayService", 30.0, self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(15)


@pytest.fixture
async def system(
    tmp_path: Path, pg_dsn: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[LocalSystem]:
    async with local_system(
        tmp_path / "data",
        database_url=pg_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix.rstrip(":"),
    ) as running:
        yield running


@pytest.fixture
def replay(system: LocalSystem, tmp_path: Path) -> Iterator[ReplayProcess]:
    process = ReplayProcess(system, tmp_path)
    try:
        yield process
    finally:
        process.stop()


async def submit(client: Client, count: int) -> list[str]:
    jobs = await asyncio.gather(*(client.execute(f"job {n}", model="local") for n in range(count)))
    return [job.name for job in jobs]


async def test_every_job_has_its_whole_history_recorded_once_across_a_sigkill(
    system: LocalSystem, replay: ReplayProcess
) -> None:
    await replay.start()
    async with Client(system.endpoint, system.api_key) as client:
        names = await submit(client, JOBS // 3)
        await asyncio.sleep(0.3)
        replay.kill()
        names += await submit(client, JOBS // 3)
        await replay.start()
        names += await submit(client, JOBS - 2 * (JOBS // 3))
        async with asyncio.timeout(WAIT):
            for name in names:
                await client.result(name)

    history = JobsServiceHistory(system.infra.channel("jobs"))
    async with Client(replay.address, system.api_key) as direct:
        async with asyncio.timeout(WAIT):
            for name in names:
                found = await _complete_recording(direct, name)
                expected = [event.id for event in await history.events_after(name, 0)]
                recorded = [event async for event in direct.recordings.play(found.name)]
                assert [event.id for event in recorded] == expected, name
                assert found.event_count == len(expected)
    log = replay.logs.read_text()
    assert "Traceback" not in log, log[-3000:]


async def _complete_recording(client: Client, job: str) -> R.Recording:
    """The job's recording, once complete."""
    while True:
        try:
            found = await client.recordings.get(job)
            if found.state == R.Recording.STATE_COMPLETE:
                return found
        except NotFoundError:
            pass
        await asyncio.sleep(0.1)
