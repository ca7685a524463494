"""A real HTTP server speaking OpenAI's chat-completions API, scripted by the tests."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

DEFAULT_MODELS = ("gpt-test", "gpt-mini")
CACHED_TOKENS = 3
CACHE_WRITE_TOKENS = 2


def unused_url() -> str:
    """A base URL on which nothing listens, so that connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@dataclass(frozen=True)
class Reply:
    """What the server answers to one chat-completions request."""

    text: str = ""
    tool_calls: tuple[tuple[str, str], ...] = ()
    """(name, JSON arguments) of each call; streamed as deltas split over several chunks."""
    include_usage: bool = True
    chunk_delay: float = 0.0
    """Pause before each streamed chunk."""
    response_delay: float = 0.0
    """Pause before the response starts."""
    error_after: int | None = None
    """Streamed: after this many chunks, send an error event and end the stream."""


@dataclass(frozen=True)
class Failure:
    """An error response the server gives instead of answering."""

    status: int
    message: str = "scripted failure"
    retry_after: str | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    authorization: str
    body: dict[str, Any] | None


class OpenAIServer:
    """Answers with the queued replies (else it echoes the last user message).

    Queued failures come first, one per request, whatever the path. Every request is
    recorded; a streaming client that goes away mid-stream is counted in `disconnects`.
    """

    def __init__(self, api_key: str = "test-key", models: tuple[str, ...] = DEFAULT_MODELS):
        self.api_key = api_key
        self.models = models
        self.requests: list[RecordedRequest] = []
        self.replies: deque[Reply] = deque()
        self.failures: deque[Failure] = deque()
        self.chunks_sent = 0
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def reply_next(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def fail_next(self, count: int, failure: Failure) -> None:
        self.failures.extend([failure] * count)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(await self._record(request))
        if refusal is not None:
            return refusal
        data = [{"id": m, "object": "model", "owned_by": "test"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        refusal = self._refusal(received)
        if refusal is not None:
            return refusal
        body = received.body or {}
        if body.get("model") not in self.models:
            return _error(404, f"The model {body.get('model')!r} does not exist")
        reply = self.replies.popleft() if self.replies else _echo(body)
        await asyncio.sleep(reply.response_delay)
        if body.get("stream"):
            return await self._stream(request, body, reply)
        return web.json_response(_completion(body, reply))

    async def _record(self, request: web.Request) -> RecordedRequest:
        body = await request.json() if request.can_read_body else None
        auth = request.headers.get("Authorization", "")
        received = RecordedRequest(request.method, request.path, auth, body)
        self.requests.append(received)
        return received

    def _refusal(self, received: RecordedRequest) -> web.Response | None:
        if self.failures:
            failure = self.failures.popleft()
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
            return _error(failure.status, failure.message, headers)
        if self.api_key and received.authorization != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided")
        return None

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for event in _stream_events(body, reply):
                await asyncio.sleep(reply.chunk_delay)
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
                self.chunks_sent += 1
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            self.disconnected.set()
            raise
        await response.write_eof()
        return response


def _echo(body: dict[str, Any]) -> Reply:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return Reply(text=f"echo: {users[-1]['content'] if users else ''}")


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    prompt = 10 * len(body.get("messages", []))
    completion = len(reply.text.split()) + 5 * len(reply.tool_calls)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": CACHED_TOKENS,
            "cache_write_tokens": CACHE_WRITE_TOKENS,
        },
    }


def _finish_reason(reply: Reply) -> str:
    return "tool_calls" if reply.tool_calls else "stop"


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(reply.tool_calls)
        ]
    result: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(reply)}],
    }
    if reply.include_usage:
        result["usage"] = _usage(body, reply)
    return result


def _stream_events(body: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    events = _answer_events(body, reply)
    if reply.error_after is None:
        return events
    failure = {"error": {"message": "the model crashed", "type": "server_error"}}
    return [*events[: reply.error_after], failure]


def _answer_events(body: dict[str, Any], reply: Reply) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in re.findall(r"\S+\s*", reply.text)]
    for index, (name, arguments) in enumerate(reply.tool_calls):
        opening = {"index": index, "id": f"call_{index}", "type": "function"}
        deltas.append({"tool_calls": [{**opening, "function": {"name": name, "arguments": ""}}]})
        third = max(1, len(arguments) // 3)
        for start in range(0, len(arguments), third):
            piece = {"index": index, "function": {"arguments": arguments[start : start + third]}}
            deltas.append({"tool_calls": [piece]})
    events = [_chunk(body, {"index": 0, "delta": d, "finish_reason": None}) for d in deltas]
    closing = {"index": 0, "delta": {}, "finish_reason": _finish_reason(reply)}
    events.append(_chunk(body, closing))
    wants_usage = (body.get("stream_options") or {}).get("include_usage")
    if wants_usage and reply.include_usage:
        events.append({**_chunk(body, None), "usage": _usage(body, reply)})
    return events


def _chunk(body: dict[str, Any], choice: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "model": body["model"],
        "choices": [choice] if choice else [],
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    error = {"message": message, "type": "test_error", "code": status}
    return web.json_response({"error": error}, status=status, headers=headers)
