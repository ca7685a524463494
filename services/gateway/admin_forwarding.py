"""The admin APIs on the gateway's port: PolicyService, LedgerService, OrchestratorService and
ReplayService, forwarded to the services themselves after checking who may call what.

One forwarder per service is built from the service's descriptor (the same methods,
messages and paths its generated stub uses), so a method needs no code here, only a row
in the access table. A method without a row is refused to everyone: a new RPC added to a
contract stays closed until someone decides who may call it.

Downstream answers, errors included (INVALID_ARGUMENT, ABORTED with their ErrorInfo), are
relayed as they are by the server interceptor. The caller's metadata is not forwarded:
the services behind the gateway trust what the gateway sends and never see API keys.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from agentrt.ledger.v1 import ledger_pb2
from agentrt.orchestrator.v1 import orchestrator_pb2
from agentrt.policy.v1 import policy_pb2
from agentrt.replay.v1 import replay_pb2, replay_pb2_grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from services.gateway.auth import Credentials, authenticate
from services.gateway.keys import Principal
from services.kit.errors import NotFound, PermissionDenied

Context = grpc.aio.ServicerContext[Any, Any]


class Access(enum.Enum):
    """Who may call a forwarded method."""

    ADMIN = "admin"
    """Admin keys only; tenant keys get PERMISSION_DENIED."""
    TENANT = "tenant"
    """Admin keys as sent; tenant keys for their own tenant: the request's `tenant` is set
    to the key's (naming another tenant is PERMISSION_DENIED)."""
    TENANT_RESULT = "tenant_result"
    """Admin keys; tenant keys only when the answer's `tenant` is theirs, else the same
    NOT_FOUND as for a missing resource, so that nothing is revealed."""
    TENANT_OWNED = "tenant_owned"
    """Admin keys; tenant keys only for a resource of their tenant, asked of the service
    first (the service's `owner` lookup, for methods whose answers carry no tenant, such
    as streams); another tenant's resource is the same NOT_FOUND as a missing one."""
    INTERNAL = "internal"
    """Nobody through the gateway: the runtime's own services call it directly."""


OwnerLookup = Callable[[grpc.aio.Channel, str], Awaitable[str]]
"""The tenant that owns the named resource, asked of the service; NotFound if none."""


@dataclass(frozen=True)
class ForwardedService:
    """A service the gateway forwards, and who may call each of its methods."""

    name: str
    """The short name whose channel the calls go through, e.g. "ledger"."""
    descriptor: ServiceDescriptor
    access: Mapping[str, Access]
    """By method name; a method not listed is refused to everyone."""
    owner: OwnerLookup | None = None
    """For TENANT_OWNED methods: who owns the resource the request names."""
    named_by: Mapping[str, str] = field(default_factory=dict)
    """For TENANT_OWNED methods: the request field (dotted path) holding the resource's
    name; "name" when not listed."""

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name


def _all(descriptor: ServiceDescriptor, access: Access) -> dict[str, Access]:
    return {method.name: access for method in descriptor.methods}


_POLICY = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]
_LEDGER = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"]
_ORCHESTRATOR = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
_REPLAY = replay_pb2.DESCRIPTOR.services_by_name["ReplayService"]


async def _recording_owner(channel: grpc.aio.Channel, name: str) -> str:
    stub = replay_pb2_grpc.ReplayServiceStub(channel)
    found: replay_pb2.Recording = await stub.GetRecording(replay_pb2.GetRecordingRequest(name=name))
    return found.tenant


FORWARDED_SERVICES: tuple[ForwardedService, ...] = (
    ForwardedService("policy", _POLICY, _all(_POLICY, Access.ADMIN)),
    ForwardedService(
        "ledger",
        _LEDGER,
        {
            **_all(_LEDGER, Access.ADMIN),
            "ListUsageRecords": Access.TENANT,
            "GetUsageReport": Access.TENANT,
            "ListBudgets": Access.TENANT,
            "CheckBudget": Access.TENANT,
            "GetBudget": Access.TENANT_RESULT,
            # Reservations are the workers' business: an operator holding or settling
            # one by hand would corrupt the accounting of a running call.
            "ReserveBudget": Access.INTERNAL,
            "SettleReservation": Access.INTERNAL,
            "ReleaseReservation": Access.INTERNAL,
            "BatchSpend": Access.INTERNAL,
        },
    ),
    ForwardedService("orchestrator", _ORCHESTRATOR, _all(_ORCHESTRATOR, Access.ADMIN)),
    ForwardedService(
        "replay",
        _REPLAY,
        {
            # A tenant sees, plays and carries away its own runs; bringing a file in (which
            # names its own tenant) and re-executing (which may call models and tools at
            # no budget's expense) are the operators'.
            "GetRecording": Access.TENANT_RESULT,
            "ListRecordings": Access.TENANT,
            "ExportRecording": Access.TENANT_OWNED,
            "PlayRecording": Access.TENANT_OWNED,
            "StepRecording": Access.TENANT_OWNED,
            "ImportRecording": Access.ADMIN,
            "ReexecuteRecording": Access.ADMIN,
        },
        owner=_recording_owner,
        named_by={"StepRecording": "start.name"},
    ),
)
"""What the gateway forwards, with the access table of every method."""


def authorize(caller: Principal, access: Access | None, method: str, request: Message) -> Message:
    """The request to forward for this caller (the tenant forced for a tenant key), or
    PermissionDenied."""
    if access is None or access is Access.INTERNAL:
        raise PermissionDenied(
            f"{method} is not available through the gateway", metadata={"method": method}
        )
    if caller.admin:
        return request
    if access is Access.ADMIN:
        raise PermissionDenied(
            f"{method} needs an admin key (`agentrt keys create --admin`)",
            metadata={"method": method},
        )
    if access is Access.TENANT:
        named = getattr(request, "tenant")  # noqa: B009 - the table guarantees the field
        if named and named != caller.tenant:
            raise PermissionDenied(
                f"this key acts for tenant {caller.tenant!r} and cannot read tenant {named!r}",
                metadata={"method": method, "tenant": named},
            )
        forced = type(request)()
        forced.CopyFrom(request)
        setattr(forced, "tenant", caller.tenant)  # noqa: B010
        return forced
    return request


def check_result(
    caller: Principal, access: Access | None, request: Message, response: Message
) -> None:
    """Hides another tenant's resource from a tenant key as if it did not exist."""
    hidden = access is Access.TENANT_RESULT and not caller.admin
    if hidden and getattr(response, "tenant") != caller.tenant:  # noqa: B009
        name = getattr(request, "name", "")
        raise NotFound(f"{_kind(name)} {name} not found", metadata={"name": name})


def _kind(name: str) -> str:
    """ "budget" for "budgets/x": the wording the services use in their NOT_FOUND."""
    collection = name.split("/", 1)[0]
    return collection.removesuffix("s") if collection else "resource"


def forwarding_handler(
    service: ForwardedService, channel: grpc.aio.Channel, keys: Credentials
) -> grpc.GenericRpcHandler[Any, Any]:
    """Serves every method of `service` by forwarding it through `channel`."""
    handlers = {
        method.name: _method_handler(service, method, channel, keys)
        for method in service.descriptor.methods
    }
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _method_handler(
    service: ForwardedService,
    method: MethodDescriptor,
    channel: grpc.aio.Channel,
    keys: Credentials,
) -> grpc.RpcMethodHandler[Any, Any]:
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    path = f"/{service.full_name}/{method.name}"
    codec: dict[str, Any] = {
        "request_serializer": request_type.SerializeToString,
        "response_deserializer": response_type.FromString,
    }
    served: dict[str, Any] = {
        "request_deserializer": request_type.FromString,
        "response_serializer": response_type.SerializeToString,
    }
    access = service.access.get(method.name)
    label = f"{service.descriptor.name}.{method.name}"

    async def allowed(context: Context, request: Message) -> Message:
        caller = await authenticate(context, keys)
        forwarded = authorize(caller, access, label, request)
        await check_owner(caller, access, service, channel, method.name, request)
        return forwarded

    if method.client_streaming and method.server_streaming:
        session = channel.stream_stream(path, **codec)

        async def forward_session(
            requests: AsyncIterator[Message], context: Context
        ) -> AsyncIterator[Message]:
            # The first message names what the session is about; it is checked, then sent.
            first = await anext(aiter(requests), None)
            if first is None:
                return
            first = await allowed(context, first)

            async def relayed() -> AsyncIterator[Message]:
                yield first
                async for request in requests:
                    yield request

            async for response in session(relayed()):
                yield response

        return grpc.stream_stream_rpc_method_handler(forward_session, **served)

    if method.client_streaming:
        upload = channel.stream_unary(path, **codec)

        async def forward_upload(requests: AsyncIterator[Message], context: Context) -> Message:
            # Checked before any byte is read: only ADMIN fits a stream with no request.
            await allowed(context, request_type())
            response: Message = await upload(requests)
            return response

        return grpc.stream_unary_rpc_method_handler(forward_upload, **served)

    if method.server_streaming:
        stream = channel.unary_stream(path, **codec)

        async def forward_stream(request: Message, context: Context) -> AsyncIterator[Message]:
            async for response in stream(await allowed(context, request)):
                yield response

        return grpc.unary_stream_rpc_method_handler(forward_stream, **served)

    call = channel.unary_unary(path, **codec)

    async def forward(request: Message, context: Context) -> Message:
        caller = await authenticate(context, keys)
        response: Message = await call(authorize(caller, access, label, request))
        check_result(caller, access, request, response)
        return response

    return grpc.unary_unary_rpc_method_handler(forward, **served)


async def check_owner(
    caller: Principal,
    access: Access | None,
    service: ForwardedService,
    channel: grpc.aio.Channel,
    method: str,
    request: Message,
) -> None:
    """For a TENANT_OWNED method and a tenant key: NotFound unless the resource the
    request names belongs to the key's tenant (a missing one is NotFound too)."""
    if access is not Access.TENANT_OWNED or caller.admin:
        return
    if service.owner is None:
        raise TypeError(f"{service.full_name}.{method} is TENANT_OWNED but has no owner lookup")
    name: Any = request
    for part in service.named_by.get(method, "name").split("."):
        name = getattr(name, part)
    owner = await service.owner(channel, str(name))
    if owner != caller.tenant:
        raise NotFound(f"{_kind(str(name))} {name} not found", metadata={"name": str(name)})


def forwarded_here(is_local: Callable[[str], bool]) -> Sequence[ForwardedService]:
    """The services the gateway forwards: those not hosted by its own process. Under
    `agentrt dev` every service shares the gateway's server, which already serves them
    under these names (and unauthenticated, on 127.0.0.1 only), so none is forwarded."""
    return [service for service in FORWARDED_SERVICES if not is_local(service.name)]
