"""A DNS server on 127.0.0.1 for tests: it answers A queries for any name with the
addresses a test sets, and changes its answer when the test does (pods come and go)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

_A = 1
_IN = 1
_ANSWER_FLAGS = 0x8180
"""A response to a recursive query, recursion available, no error."""


class DnsServer(asyncio.DatagramProtocol):
    """Answers every A query with `addresses`, every other type with no records."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = list(addresses)
        self.queries = 0
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        self._transport.sendto(self.answer(data), addr)

    def answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack("!H", query[:2])
        end = 12
        while query[end]:  # the labels of the one question's name
            end += query[end] + 1
        (qtype,) = struct.unpack("!H", query[end + 1 : end + 3])
        question = query[12 : end + 5]
        records = self.addresses if qtype == _A else []
        self.queries += 1
        header = struct.pack("!HHHHHH", ident, _ANSWER_FLAGS, 1, len(records), 0, 0)
        # Each answer names the question's name by a pointer to it (offset 12).
        answers = b"".join(
            b"\xc0\x0c" + struct.pack("!HHIH", _A, _IN, 0, 4) + socket.inet_aton(address)
            for address in records
        )
        return header + question + answers


@asynccontextmanager
async def dns_server(addresses: list[str]) -> AsyncIterator[tuple[DnsServer, int]]:
    """A running DnsServer and its UDP port on 127.0.0.1; a gRPC target
    `dns://127.0.0.1:<port>/<name>:<port>` asks it rather than the system's resolver."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: DnsServer(addresses), local_addr=("127.0.0.1", 0)
    )
    try:
        yield server, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()
