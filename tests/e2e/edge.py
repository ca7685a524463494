"""Runs `agentrt edge` (the real Envoy) in front of a gateway, for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.processes import AGENTRT, free_ports


@dataclass(frozen=True)
class Edge:
    """A running edge: its URL (http or https), its gRPC address and its admin URL."""

    url: str
    address: str
    admin_url: str
    log: Path


@asynccontextmanager
async def running_edge(
    gateway: str,
    workdir: Path,
    extra: Mapping[str, str] = {},
    verify: ssl.SSLContext | bool = False,
    ready_path: str = "/ready",
) -> AsyncIterator[Edge]:
    """`agentrt edge` in front of `gateway` on free ports, once `ready_path` on its port
    answers 200 (`/ready`: Envoy is up and the gateway passes its health check); a
    `ready_path` starting with `admin:` is asked of the admin interface instead.

    Waits without blocking the event loop, which may be serving the gateway itself."""
    port, admin = free_ports(2)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AGENTRT_")},
        "AGENTRT_DATA_DIR": str(workdir),
        "AGENTRT_GATEWAY_ADDRESS": gateway,
        "AGENTRT_EDGE_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "AGENTRT_EDGE_ADMIN_ADDRESS": f"127.0.0.1:{admin}",
        **extra,
    }
    process, log = _start(env, workdir, port)
    scheme = "https" if "AGENTRT_EDGE_TLS_CERT_FILE" in extra else "http"
    edge = Edge(
        f"{scheme}://127.0.0.1:{port}", f"127.0.0.1:{port}", f"http://127.0.0.1:{admin}", log
    )
    try:
        await _wait_ready(edge, process, verify, ready_path)
        yield edge
    finally:
        process.send_signal(signal.SIGTERM)
        for _ in range(200):
            if process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            process.kill()
            process.wait(5)


def _start(env: dict[str, str], workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"edge-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [AGENTRT, "edge", "--config-file", str(workdir / f"envoy-{port}.yaml")],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return process, log


async def _wait_ready(
    edge: Edge, process: subprocess.Popen[bytes], verify: ssl.SSLContext | bool, path: str
) -> None:
    url = (
        f"{edge.admin_url}{path.removeprefix('admin:')}"
        if path.startswith("admin:")
        else (f"{edge.url}{path}")
    )
    async with httpx.AsyncClient(verify=verify, timeout=1.0) as client:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"the edge exited: {edge.log.read_text()}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"the edge did not become ready: {edge.log.read_text()}")


def grpc_web_frame(message: bytes) -> bytes:
    """One gRPC-Web data frame: flag 0, the length in 4 big-endian bytes, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The messages of a gRPC-Web response body and its trailers (the frame flagged 0x80)."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        flag = body[offset]
        (length,) = struct.unpack(">I", body[offset + 1 : offset + 5])
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


async def json_lines(response: httpx.Response) -> list[dict[str, Any]]:
    """The objects of a transcoded server stream: one JSON object a line."""
    return [json.loads(line) async for line in response.aiter_lines() if line.strip()]
