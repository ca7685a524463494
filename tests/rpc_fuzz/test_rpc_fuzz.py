"""Generated requests on every RPC of every contract: none may end UNKNOWN or INTERNAL.

The services come from the generated descriptors, so a new RPC is covered as soon as a
unit serves it. Each backend's whole system runs in a thread of its own (as `agentrt dev`
does), so that Hypothesis drives plain blocking calls. A streaming RPC is judged by its
first response. In CI the examples are derandomized, so that a run is repeatable.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import given
from hypothesis import strategies as st

from tests.rpc_fuzz.messages import messages
from tests.rpc_fuzz.system import (
    CALL_SECONDS,
    METHODS,
    RunningSystem,
    call_method,
    expect_clear_status,
    fuzz_settings,
)

# The services' own thread draws jitter from `random` while Hypothesis draws a request;
# the strategies themselves do not use it.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module")


def _check(system: RunningSystem, method: MethodDescriptor, data: st.DataObject) -> None:
    if method.containing_service.full_name not in system.served:
        pytest.skip(f"no unit of this release serves {method.containing_service.full_name}")
    request = data.draw(messages(method.input_type, system.plausible), label="request")
    call = call_method(system.channel, method, system.metadata)
    try:
        call(request, CALL_SECONDS)
    except grpc.RpcError as error:
        expect_clear_status(method.full_name, error)


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.full_name)
@given(data=st.data())
@fuzz_settings(examples=6)
def test_no_request_fails_unknown_or_internal(
    sqlite_fuzz_system: RunningSystem, method: MethodDescriptor, data: st.DataObject
) -> None:
    _check(sqlite_fuzz_system, method, data)


@pytest.mark.integration
@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.full_name)
@given(data=st.data())
@fuzz_settings(examples=3)
def test_no_request_fails_unknown_or_internal_on_postgres(
    pg_fuzz_system: RunningSystem, method: MethodDescriptor, data: st.DataObject
) -> None:
    """PostgreSQL refuses what SQLite stores (NUL characters), so it has a run of its own."""
    _check(pg_fuzz_system, method, data)
