"""The admin APIs on the gateway's port: PolicyService, LedgerService and OrchestratorService,
forwarded to the services themselves after checking who may call what.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from agentrt.ledger.v1 import ledger_pb2
from agentrt.orchestrator.v1 import orchestrator_pb2
from agentrt.policy.v1 import policy_pb2
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
    INTERNAL = "internal"
    """Nobody through the gateway: the runtime's own services call it directly."""


@dataclass(frozen=True)
class ForwardedService:
    """A service the gateway forwards, and who may call each of its methods."""

    name: str
    """The short name whose channel the calls go through, e.g. "ledger"."""
    descriptor: ServiceDescriptor
    access: Mapping[str, Access]
    """By method name; a method not listed is refused to everyone."""

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name


def _all(descriptor: ServiceDescriptor, access: Access) -> dict[str, Access]:
    return {method.name: access for method in descriptor.methods}


_POLICY = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]
_LEDGER = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"]
_ORCHESTRATOR = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]

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
        },
    ),
    ForwardedService("orchestrator", _ORCHESTRATOR, _all(_ORCHESTRATOR, Access.ADMIN)),
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
    if method.client_streaming or method.server_streaming:
        raise TypeError(f"{method.full_name}: only unary methods can be forwarded")
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    path = f"/{service.full_name}/{method.name}"
    call = channel.unary_unary(
        path,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    access = service.access.get(method.name)
    label = f"{service.descriptor.name}.{method.name}"

    async def forward(request: Message, context: Context) -> Message:
        caller = await authenticate(context, keys)
        response: Message = await call(authorize(caller, access, label, request))
        check_result(caller, access, request, response)
        return response

    return grpc.unary_unary_rpc_method_handler(
        forward,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def forwarded_here(is_local: Callable[[str], bool]) -> Sequence[ForwardedService]:
    """The services the gateway forwards: those not hosted by its own process. Under
    `agentrt dev` every service shares the gateway's server, which already serves them
    under these names (and unauthenticated, on 127.0.0.1 only), so none is forwarded."""
    return [service for service in FORWARDED_SERVICES if not is_local(service.name)]
