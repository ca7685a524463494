"""The gateway service's unit: its key store, the model directory, stubs to jobs and engine,
the model API (gRPC, and OpenAI-compatible HTTP when configured)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from agentrt.engine.v1 import engine_pb2_grpc
from agentrt.gateway.v1 import gateway_pb2, gateway_pb2_grpc, models_pb2, models_pb2_grpc
from agentrt.jobs.v1 import jobs_pb2_grpc

from services.gateway.admin_forwarding import forwarded_here, forwarding_handler
from services.gateway.auth import KeysAndTokens
from services.gateway.handlers import RuntimeHandler, list_engine_models
from services.gateway.keys import ApiKeys
from services.gateway.model_api import ModelApi
from services.gateway.model_handlers import ModelHandler
from services.gateway.models import ModelDirectory
from services.gateway.openai_http import OpenAIHttp, parse_listen_address
from services.gateway.store import ApiKeyStore, open_key_store
from services.gateway.tokens import JwtConfig, TokenVerifier
from services.kit.config import env_float, env_str
from services.kit.infra import Infrastructure
from services.kit.server import ServiceUnit
from services.orchestrator.policy import CachedPolicy, open_policy_guard
from services.orchestrator.spend import open_spend_guard


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway treats its callers."""

    default_model: str
    """AGENTRT_DEFAULT_MODEL: the model of a job whose spec names none (default `local`)."""
    key_cache_seconds: float
    """AGENTRT_API_KEY_CACHE_SECONDS: how long a verified key is trusted without reading
    the database, and so how long a key revoked elsewhere may still work (default 5)."""
    model_cache_seconds: float
    """AGENTRT_MODEL_CACHE_SECONDS: how often the engine's model list is refreshed
    (default 5; a model not listed triggers a refresh at most once a second)."""
    jwt: JwtConfig
    """AGENTRT_JWT_*: the identity provider whose JWTs are accepted beside API keys."""
    http_address: str = ""
    """AGENTRT_HTTP_LISTEN_ADDRESS: `host:port` of the OpenAI-compatible HTTP endpoint
    (/v1/chat/completions, /v1/models); empty (the default) serves none."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        http_address = env_str("AGENTRT_HTTP_LISTEN_ADDRESS", "", env)
        if http_address:
            parse_listen_address("AGENTRT_HTTP_LISTEN_ADDRESS", http_address)
        return cls(
            default_model=env_str("AGENTRT_DEFAULT_MODEL", "local", env),
            key_cache_seconds=env_float("AGENTRT_API_KEY_CACHE_SECONDS", 5.0, env),
            model_cache_seconds=env_float("AGENTRT_MODEL_CACHE_SECONDS", 5.0, env),
            jwt=JwtConfig.from_env(env),
            http_address=http_address,
        )


RUNTIME_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name
MODEL_SERVICE = models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name


class GatewayUnit:
    """The public front door: RuntimeService, the model API (ModelService, and its
    OpenAI-compatible HTTP endpoint when configured), and the admin APIs it forwards
    (services/gateway/admin_forwarding.py)."""

    name = "gateway"

    def __init__(
        self,
        store: ApiKeyStore,
        handler: RuntimeHandler,
        models: ModelDirectory,
        forwarders: Mapping[str, grpc.GenericRpcHandler[object, object]] | None = None,
        model_handler: ModelHandler | None = None,
        policy: CachedPolicy | None = None,
        http: OpenAIHttp | None = None,
    ) -> None:
        """`forwarders` maps the full name of each forwarded service to its handler;
        `policy` is the cache the model API decides with, followed while serving."""
        self._store = store
        self._handler = handler
        self._models = models
        self._forwarders = dict(forwarders or {})
        self._model_handler = model_handler
        self._policy = policy
        self._http = http

    @property
    def service_names(self) -> Sequence[str]:
        """RuntimeService, ModelService and the forwarded services, for health and
        reflection."""
        models = [MODEL_SERVICE] if self._model_handler is not None else []
        return [RUNTIME_SERVICE, *models, *self._forwarders]

    @property
    def http_url(self) -> str:
        """Where the OpenAI-compatible endpoint listens, once started; empty without one."""
        return self._http.url if self._http is not None else ""

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_RuntimeServiceServicer_to_server(self._handler, server)
        if self._model_handler is not None:
            models_pb2_grpc.add_ModelServiceServicer_to_server(self._model_handler, server)
        server.add_generic_rpc_handlers(list(self._forwarders.values()))

    async def start(self) -> None:
        """Follows policy changes and opens the HTTP endpoint; keys and models are loaded
        on first use."""
        if self._policy is not None:
            await self._policy.start()
        if self._http is not None:
            await self._http.start()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
        if self._policy is not None:
            await self._policy.stop()
        await self._models.close()

    async def close(self) -> None:
        await self._store.close()


async def create_unit(infra: Infrastructure) -> ServiceUnit:
    """The gateway on the store of `infra.storage("gateway")`, which must be migrated."""
    config = GatewayConfig.from_env()
    store = await open_key_store(infra.storage("gateway"))
    engine = engine_pb2_grpc.EngineServiceStub(infra.channel("engine"))
    models = ModelDirectory(lambda: list_engine_models(engine), ttl=config.model_cache_seconds)
    keys = ApiKeys(store, cache_seconds=config.key_cache_seconds)
    credentials = KeysAndTokens(keys, TokenVerifier(config.jwt) if config.jwt.enabled else None)
    handler = RuntimeHandler(
        keys=credentials,
        jobs=jobs_pb2_grpc.JobServiceStub(infra.channel("jobs")),
        models=models,
        events=infra.events,
        default_model=config.default_model,
    )
    forwarders = {
        service.full_name: forwarding_handler(service, infra.channel(service.name), credentials)
        for service in forwarded_here(infra.hosts_locally)
    }
    policy = open_policy_guard(infra)
    api = ModelApi(engine, models, policy, open_spend_guard(infra))
    http = None
    if config.http_address:
        host, port = parse_listen_address("AGENTRT_HTTP_LISTEN_ADDRESS", config.http_address)
        http = OpenAIHttp(credentials, api, host, port)
    return GatewayUnit(
        store, handler, models, forwarders, ModelHandler(credentials, api), policy, http
    )
