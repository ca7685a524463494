"""Hypothesis strategies for any protobuf message, built from its descriptor alone."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Sequence
from typing import Any

import agentrt
from google.protobuf import message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
)
from google.protobuf.message import Message
from hypothesis import strategies as st

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
EDGES_64 = [0, 1, -1, 2**63 - 1, -(2**63), 253402300800, -62135596801, 10**12]
"""Extremes of int64, and the first second past year 9999 and before year 1."""
EDGES_NANOS = [0, -1, 999_999_999, 1_000_000_000, 2**31 - 1, -(2**31)]

NUL_TEXTS = ["\x00", "a\x00b", "dev\x00", "jobs/\x00"]


def contract_files() -> Iterator[FileDescriptor]:
    """Every generated `agentrt.<service>.v1` file, found by walking the package."""
    for module in pkgutil.walk_packages(agentrt.__path__, "agentrt."):
        if module.name.endswith("_pb2") and ".v1." in module.name:
            yield importlib.import_module(module.name).DESCRIPTOR


def contract_methods() -> list[MethodDescriptor]:
    """Every RPC of every service in the contracts, sorted by full name."""
    methods = [
        method
        for file in contract_files()
        for service in file.services_by_name.values()
        for method in service.methods
    ]
    return sorted(methods, key=lambda method: method.full_name)


def texts(plausible: Sequence[str]) -> st.SearchStrategy[str]:
    """Mostly values a handler may accept (so that calls get past the first check), often
    NULs and long or odd text, and those values with a NUL added."""
    known = st.sampled_from(list(plausible) or [""])
    return st.one_of(
        known,
        known,
        known.map(lambda value: value + "\x00"),
        st.sampled_from(NUL_TEXTS),
        st.sampled_from(["x", "\u00e9", "a\x00"]).flatmap(
            lambda unit: st.sampled_from([5000, 70_000]).map(lambda count: unit * count)
        ),
        st.text(max_size=40),
    )


def _integers(low: int, high: int, edges: Sequence[int]) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 100),
        st.integers(0, 100),
        st.sampled_from([edge for edge in edges if low <= edge <= high]),
        st.integers(low, high),
    )


def _seconds() -> st.SearchStrategy[int]:
    """Times around now (seconds since 1970, or a duration's seconds), and extremes."""
    return st.one_of(
        st.integers(0, 3600),
        st.integers(1_700_000_000, 1_900_000_000),
        _integers(*INT64, EDGES_64),
    )


def scalar(field: FieldDescriptor, plausible: Sequence[str]) -> st.SearchStrategy[Any]:
    """Any value of a scalar or enum field, edges included (unknown enum numbers too)."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return texts(plausible)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        numbers = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.sampled_from(numbers), st.integers(*INT32))
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _integers(0, 2**64 - 1, EDGES_64)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _integers(0, 2**32 - 1, EDGES_64)
    if kind in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return _integers(*INT32, EDGES_NANOS)
    return _integers(*INT64, EDGES_64)


def messages(
    descriptor: Descriptor, plausible: Sequence[str], depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of this type with any subset of their fields set to any values."""
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return st.builds(
            cls,
            seconds=_seconds(),
            nanos=st.one_of(st.just(0), _integers(*INT32, EDGES_NANOS)),
        )
    if depth >= 4:
        return st.just(cls())
    optional = {field.name: _field(field, plausible, depth) for field in descriptor.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _field(field: FieldDescriptor, plausible: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        return st.dictionaries(
            scalar(key, plausible), _single(value, plausible, depth + 1), max_size=3
        )
    single = _single(field, plausible, depth + 1)
    if field.is_repeated:
        return st.lists(single, max_size=3)
    return single


def _single(field: FieldDescriptor, plausible: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return messages(field.message_type, plausible, depth)
    return scalar(field, plausible)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            for item in value:
                if isinstance(item, Message):
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message
