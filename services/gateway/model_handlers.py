"""ModelService: authenticates every call and delegates to the model API's logic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from agentrt.gateway.v1 import models_pb2, models_pb2_grpc

from services.gateway.auth import Credentials, authenticate
from services.gateway.model_api import ModelApi

Context = grpc.aio.ServicerContext[Any, Any]


class ModelHandler(models_pb2_grpc.ModelServiceServicer):
    """Direct model calls with the caller's key, policy and budgets."""

    def __init__(self, credentials: Credentials, api: ModelApi) -> None:
        self._credentials = credentials
        self._api = api

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: Context
    ) -> models_pb2.ListModelsResponse:
        caller = await authenticate(context, self._credentials)
        return await self._api.list_models(caller, request.page_size, request.page_token)

    async def Complete(
        self, request: models_pb2.CompleteRequest, context: Context
    ) -> models_pb2.CompleteResponse:
        caller = await authenticate(context, self._credentials, request.request_id)
        return await self._api.complete(caller, request)

    async def StreamComplete(
        self, request: models_pb2.CompleteRequest, context: Context
    ) -> AsyncIterator[models_pb2.CompleteChunk]:
        caller = await authenticate(context, self._credentials, request.request_id)
        async with aclosing(self._api.stream(caller, request)) as chunks:
            async for chunk in chunks:
                yield chunk
