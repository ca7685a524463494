"""A real HTTP server speaking Anthropic's Messages API, scripted by the tests."""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

CACHE_WRITE, CACHE_READ = 7, 11
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Reply:
    """What the server answers to one request."""

    text: str = ""
    tool_uses: tuple[tuple[str, dict[str, Any]], ...] = ()
    """(name, input) of each tool_use block; streamed as input_json_delta pieces."""
    stop_reason: str = ""
    """Empty: tool_use when there are tool uses, else end_turn."""
    error_after: int | None = None
    """Streamed: after this many events, send an overloaded error event and end."""


@dataclass(frozen=True)
class Failure:
    status: int
    message: str = "scripted failure"
    retry_after: str | None = None


class AnthropicServer:
    """Answers with the queued replies (else it echoes the last user text)."""

    def __init__(self, api_key: str = "anthropic-key") -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.replies: deque[Reply] = deque()
        self.failures: deque[Failure] = deque()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.failures:
            failure = self.failures.popleft()
            headers = {"retry-after": failure.retry_after} if failure.retry_after else None
            return _error(failure.status, failure.message, headers)
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "anthropic-version header is required")
        if not isinstance(body.get("max_tokens"), int):
            return _error(400, "max_tokens: Field required")
        reply = self.replies.popleft() if self.replies else _echo(body)
        if body.get("stream"):
            return await self._stream(request, body, reply)
        return web.json_response(_message(body, reply))

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = _events(body, reply)
        if reply.error_after is not None:
            overloaded = {"type": "overloaded_error", "message": "Overloaded"}
            events = [*events[: reply.error_after], {"type": "error", "error": overloaded}]
        for event in events:
            await asyncio.sleep(0)
            data = json.dumps(event)
            await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
        await response.write_eof()
        return response


def _echo(body: dict[str, Any]) -> Reply:
    users = [m for m in body["messages"] if m["role"] == "user"]
    texts = [b["text"] for b in users[-1]["content"] if b["type"] == "text"] if users else []
    return Reply(text=f"echo: {' '.join(texts)}")


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, int]:
    return {
        "input_tokens": 10 * len(body["messages"]),
        "cache_creation_input_tokens": CACHE_WRITE,
        "cache_read_input_tokens": CACHE_READ,
        "output_tokens": len(reply.text.split()) + 5 * len(reply.tool_uses),
    }


def _stop_reason(reply: Reply) -> str:
    return reply.stop_reason or ("tool_use" if reply.tool_uses else "end_turn")


def _blocks(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    for i, (name, arguments) in enumerate(reply.tool_uses):
        blocks.append({"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": arguments})
    return blocks


def _message(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": _blocks(reply),
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": _usage(body, reply),
    }


def _events(body: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    usage = _usage(body, reply)
    start = {**_message(body, reply), "content": [], "stop_reason": None}
    start["usage"] = {**usage, "output_tokens": 1}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for index, block in enumerate(_blocks(reply)):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            pieces = [
                {"type": "text_delta", "text": p} for p in re.findall(r"\S+\s*", block["text"])
            ]
        else:
            opening = {**block, "input": {}}
            arguments = json.dumps(block["input"])
            third = max(1, len(arguments) // 3)
            pieces = [
                {"type": "input_json_delta", "partial_json": arguments[i : i + third]}
                for i in range(0, len(arguments), third)
            ]
        events.append({"type": "content_block_start", "index": index, "content_block": opening})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in pieces]
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    error = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
    return web.json_response({"type": "error", "error": error}, status=status, headers=headers)
