"""EngineService: validates requests, delegates to the CompletionEngine, maps its errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import grpc
from agentrt.common.v1 import common_pb2
from agentrt.engine.v1 import engine_pb2, engine_pb2_grpc

from services.engine import convert
from services.engine.completion import CompletionEngine
from services.engine.errors import (
    EngineError,
    IdempotencyConflict,
    ModelNotFound,
    ProviderRejected,
    RateLimited,
)
from services.kit import errors
from services.kit.errors import IDEMPOTENCY_HOOKS
from services.kit.paging import decode_offset, encode_offset, page_size

Context = grpc.aio.ServicerContext[Any, Any]
_PROVIDER_ERROR = common_pb2.ERROR_REASON_PROVIDER_ERROR


@contextmanager
def engine_errors() -> Iterator[None]:
    """Turns the engine's domain errors into the statuses the contract documents."""
    try:
        yield
    except ModelNotFound as error:
        raise errors.NotFound(
            f"model {error.model!r} is not served by any configured provider",
            common_pb2.ERROR_REASON_MODEL_NOT_FOUND,
            {"model": error.model},
        ) from None
    except IdempotencyConflict as error:
        raise errors.InvalidArgument(
            str(error), common_pb2.ERROR_REASON_IDEMPOTENCY_CONFLICT, _hooks(error)
        ) from None
    except RateLimited as error:
        raise errors.ResourceExhausted(str(error), _PROVIDER_ERROR, _hooks(error)) from None
    except ProviderRejected as error:
        raise errors.FailedPrecondition(str(error), _PROVIDER_ERROR, _hooks(error)) from None
    except EngineError as error:
        raise errors.Unavailable(str(error), _PROVIDER_ERROR, _hooks(error)) from None


def _hooks(error: EngineError) -> dict[str, str]:
    """The ErrorInfo metadata that tells the caller the failed call's idempotency hooks."""
    if not error.idempotency_hooks:
        return {}
    return {IDEMPOTENCY_HOOKS: ",".join(error.idempotency_hooks)}


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    """Model calls for the orchestrator, the model list for everyone."""

    def __init__(self, engine: CompletionEngine) -> None:
        self._engine = engine

    async def Complete(
        self, request: engine_pb2.CompleteRequest, context: Context
    ) -> engine_pb2.CompleteResponse:
        messages, tools, params = convert.request_from_proto(request)
        with engine_errors():
            completion = await self._engine.complete(
                request.model,
                messages,
                tools,
                params,
                request.idempotency_key,
                tenant=request.tenant,
                cache=convert.cache_from_proto(request.cache),
                deadline=_deadline(context),
            )
        return convert.completion_to_proto(completion)

    async def StreamComplete(
        self, request: engine_pb2.CompleteRequest, context: Context
    ) -> AsyncIterator[engine_pb2.CompleteChunk]:
        messages, tools, params = convert.request_from_proto(request)
        with engine_errors():
            chunks = self._engine.stream(
                request.model,
                messages,
                tools,
                params,
                request.idempotency_key,
                tenant=request.tenant,
                cache=convert.cache_from_proto(request.cache),
                deadline=_deadline(context),
            )
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield convert.chunk_to_proto(chunk)

    async def ListModels(
        self, request: engine_pb2.ListModelsRequest, context: Context
    ) -> engine_pb2.ListModelsResponse:
        size = page_size(request.page_size, 100, 1000)
        start = decode_offset(request.page_token)
        models = await self._engine.list_models()
        page = models[start : start + size]
        more = start + size < len(models)
        deployments = [await self._engine.deployments(info.id) for info in page]
        return engine_pb2.ListModelsResponse(
            models=[
                convert.model_to_proto(info, served)
                for info, served in zip(page, deployments, strict=True)
            ],
            next_page_token=encode_offset(start + size) if more else "",
        )


def _deadline(context: Context) -> float | None:
    """The call's deadline as a `time.monotonic()` instant, if the caller set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
