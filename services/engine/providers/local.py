"""A built-in deterministic model, so that agentrt runs, demos and tests its tool loop offline.

The answer is a function of the conversation alone: the same messages, tools and parameters
give the same answer and the same usage. It restates the last user message and says which
turn this is. When tools are offered and the last user message has lines
`call <tool_name> <arguments>` naming offered tools, it asks for those tool calls instead
(the arguments are passed on verbatim, so a test can also hand the tool loop invalid JSON);
after tool results it answers with text that quotes them.

So that workflows run offline, a system prompt may script the answer: a line
`reply: TEXT` answers TEXT, and a line `if "NEEDLE" reply: TEXT` answers TEXT when the last
user message contains NEEDLE (case-insensitive); the first line that applies wins, and
`{input}` in TEXT stands for the last user message. Planners, splitters, routers and
moderators are scripted this way (a JSON plan, a route's name, "AGREE").
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Sequence

from services.engine.errors import ModelNotFound
from services.engine.model import (
    ChatMessage,
    Completion,
    CompletionChunk,
    CompletionParams,
    FinishReason,
    ModelInfo,
    ToolCall,
    ToolSpec,
)
from services.engine.tokens import estimate_tokens, estimate_usage, truncate_to_tokens

LOCAL_MODEL = "local"
"""Answers at once, in one chunk."""
LOCAL_SLOW_MODEL = "local-slow"
"""Streams word by word with a fixed delay per chunk: for live demos and mid-run failures."""

_CONTEXT_WINDOW = 32_768
_CALL_DIRECTIVE = re.compile(r"^[ \t]*call[ \t]+([A-Za-z0-9_-]{1,64})[ \t]+(\S.*?)[ \t]*$", re.M)
_PIECE = re.compile(r"\S+\s*|\s+")
_REPLY_DIRECTIVE = re.compile(r'^[ \t]*(?:if[ \t]+"([^"]*)"[ \t]+)?reply:[ \t]?(.*?)[ \t]*$', re.M)


class LocalProvider:
    """The `local` and `local-slow` models, computed in-process."""

    def __init__(self, chunk_delay: float = 0.1, name: str = "local") -> None:
        """`chunk_delay` is the pause, in seconds, before each chunk of `local-slow`."""
        if chunk_delay < 0:
            raise ValueError(f"chunk_delay must not be negative, got {chunk_delay}")
        self._chunk_delay = chunk_delay
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                id=model_id,
                provider=self._name,
                context_window=_CONTEXT_WINDOW,
                supports_tools=True,
                supports_streaming=True,
            )
            for model_id in (LOCAL_MODEL, LOCAL_SLOW_MODEL)
        ]

    async def complete(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
    ) -> Completion:
        slow = self._is_slow(model)
        answer, reason = answer_conversation(messages, tools, params)
        if slow:
            await asyncio.sleep(self._chunk_delay * max(1, len(_pieces(answer.content))))
        return Completion(
            message=answer,
            finish_reason=reason,
            usage=estimate_usage(messages, tools, answer),
            model=model,
            provider=self._name,
        )

    async def stream(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        params: CompletionParams,
    ) -> AsyncGenerator[CompletionChunk, None]:
        slow = self._is_slow(model)
        answer, reason = answer_conversation(messages, tools, params)
        whole = [answer.content] if answer.content else []
        pieces = _pieces(answer.content) if slow else whole
        for piece in pieces:
            if slow:
                await asyncio.sleep(self._chunk_delay)
            yield CompletionChunk(text_delta=piece)
        if slow and not pieces:
            await asyncio.sleep(self._chunk_delay)
        yield CompletionChunk(
            tool_calls=answer.tool_calls,
            finish_reason=reason,
            usage=estimate_usage(messages, tools, answer),
        )

    async def aclose(self) -> None:
        """Nothing to release."""

    def _is_slow(self, model: str) -> bool:
        """Whether `model` is the slow one; raises ModelNotFound for a model not served here."""
        if model not in (LOCAL_MODEL, LOCAL_SLOW_MODEL):
            raise ModelNotFound(model)
        return model == LOCAL_SLOW_MODEL


def answer_conversation(
    messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], params: CompletionParams
) -> tuple[ChatMessage, FinishReason]:
    """The local model's answer to a conversation, and why it ended."""
    if messages and messages[-1].role == "tool":
        return _limited(_quote_tool_results(messages), params)
    user_messages = [m for m in messages if m.role == "user"]
    last_user = user_messages[-1].content if user_messages else ""
    scripted = _scripted_reply(messages, last_user)
    if scripted is not None:
        return _limited(scripted, params)
    calls = _requested_calls(last_user, tools, call_prefix=f"call_{len(messages)}")
    if calls:
        return ChatMessage(role="assistant", content="", tool_calls=calls), "tool_calls"
    text = (
        f'Turn {len(user_messages)}. You said: "{last_user}". '
        "I am agentrt's local model, and I repeat what I am told."
    )
    return _limited(text, params)


def _scripted_reply(messages: Sequence[ChatMessage], last_user: str) -> str | None:
    """The answer a system prompt scripts for the last user message, if any."""
    for message in messages:
        if message.role != "system":
            continue
        for match in _REPLY_DIRECTIVE.finditer(message.content):
            needle, text = match.group(1), match.group(2)
            if needle is None or needle.casefold() in last_user.casefold():
                return text.replace("{input}", last_user)
    return None


def _requested_calls(
    text: str, tools: Sequence[ToolSpec], call_prefix: str
) -> tuple[ToolCall, ...]:
    offered = {tool.name for tool in tools}
    directives = [m for m in _CALL_DIRECTIVE.finditer(text) if m.group(1) in offered]
    return tuple(
        ToolCall(id=f"{call_prefix}_{index}", name=match.group(1), arguments=match.group(2))
        for index, match in enumerate(directives)
    )


def _quote_tool_results(messages: Sequence[ChatMessage]) -> str:
    results: list[ChatMessage] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.insert(0, message)
    names = {call.id: call.name for m in messages for call in m.tool_calls}
    return " ".join(
        f"Tool {names.get(m.tool_call_id) or m.name or 'tool'} returned: {m.content}"
        for m in results
    )


def _limited(text: str, params: CompletionParams) -> tuple[ChatMessage, FinishReason]:
    cuts = [index for index in (text.find(stop) for stop in params.stop) if index >= 0]
    if cuts:
        text = text[: min(cuts)]
    reason: FinishReason = "stop"
    limit = params.max_output_tokens
    if limit is not None and estimate_tokens(text) > limit:
        text, reason = truncate_to_tokens(text, limit), "length"
    return ChatMessage(role="assistant", content=text), reason


def _pieces(text: str) -> list[str]:
    return _PIECE.findall(text)
