"""A minimal writer (and header reader) for the ONNX protobuf wire format.

The runtime guard folds its action checks into the policy's graph at load time (see
``tailguard/runtime/policy.py``). It must do so without the ``onnx`` package, which is not
a runtime dependency, so this module encodes the handful of messages it needs by hand.

It relies on a protobuf rule: concatenating two serialized messages is the same as merging
them (repeated fields append, singular embedded messages merge). Appending a ``ModelProto``
that holds only a ``graph`` with extra nodes/inputs/outputs/initializers therefore extends
the original graph without parsing or re-serializing it.

Field numbers are from onnx.proto (IR version 3 and later).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tailguard.errors import PolicyLoadError

FLOAT = 1  # TensorProto.DataType.FLOAT


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 negatives are 10-byte two's complement varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _str(number: int, text: str) -> bytes:
    return _field(number, text.encode())


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto of a float32 array (dims=1, data_type=2, name=8, raw_data=9)."""
    a = np.ascontiguousarray(array, dtype="<f4")
    dims = b"".join(_int_field(1, int(d)) for d in a.shape)
    return dims + _int_field(2, FLOAT) + _str(8, name) + _field(9, a.tobytes())


def value_info(name: str, shape: Sequence[int | str]) -> bytes:
    """ValueInfoProto of a float tensor; str dims are symbolic (dim_param)."""
    dims = b"".join(
        _field(1, _str(2, d) if isinstance(d, str) else _int_field(1, int(d))) for d in shape
    )
    tensor_type = _int_field(1, FLOAT) + _field(2, dims)  # elem_type=1, shape=2
    return _str(1, name) + _field(2, _field(1, tensor_type))  # name=1, type=2 {tensor_type=1}


def node(
    op_type: str,
    inputs: Iterable[str],
    outputs: Iterable[str],
    name: str,
    int_attrs: dict[str, int] | None = None,
    float_attrs: dict[str, float] | None = None,
) -> bytes:
    """NodeProto (input=1, output=2, name=3, op_type=4, attribute=5)."""
    body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    body += _str(3, name) + _str(4, op_type)
    for key, value in (int_attrs or {}).items():  # AttributeProto: name=1, i=3, type=20 (INT=2)
        body += _field(5, _str(1, key) + _int_field(3, value) + _int_field(20, 2))
    for key, fvalue in (float_attrs or {}).items():  # f=2 (fixed32), type=20 (FLOAT=1)
        f32 = _varint(2 << 3 | 5) + struct.pack("<f", fvalue)
        body += _field(5, _str(1, key) + f32 + _int_field(20, 1))
    return body


def graph_extension(
    nodes: Iterable[bytes],
    inputs: Iterable[bytes] = (),
    outputs: Iterable[bytes] = (),
    initializers: Iterable[bytes] = (),
) -> bytes:
    """A serialized ModelProto fragment that, appended to a model, extends its graph."""
    graph = b"".join(_field(1, n) for n in nodes)  # node=1
    graph += b"".join(_field(5, t) for t in initializers)  # initializer=5
    graph += b"".join(_field(11, v) for v in inputs)  # input=11
    graph += b"".join(_field(12, v) for v in outputs)  # output=12
    return _field(7, graph)  # ModelProto.graph=7


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``; PolicyLoadError if malformed."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise PolicyLoadError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise PolicyLoadError("varint too long")


def _top_level_fields(data: bytes) -> Iterable[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) of a message's top-level fields."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        key, pos = read_varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(view, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = read_varint(view, pos)
            if pos + length > len(view):
                raise PolicyLoadError("truncated length-delimited field")
            yield number, wire, view[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise PolicyLoadError(f"unsupported wire type {wire}")


@dataclass(frozen=True)
class ModelHeader:
    """The facts :func:`model_header` reads from a ModelProto without the ``onnx`` package.

    Attributes:
        ir_version: ModelProto.ir_version (field 1).
        opsets: {domain: version} of the opset imports (field 8; "" is the default domain).
        uses_external_data: some graph initializer has ``data_location: EXTERNAL``.
        producer_name, producer_version: fields 2 and 3 (strings; "" when absent).
    """

    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    uses_external_data: bool = False
    producer_name: str = ""
    producer_version: str = ""


def _text(value: int | memoryview) -> str:
    return bytes(value).decode(errors="replace")  # type: ignore[arg-type]


def model_header(data: bytes) -> ModelHeader:
    """Read a ModelProto's IR version, opset imports, producer and external-data use.

    The external-data flag is a conservative search for the ``data_location: EXTERNAL``
    marker inside the graph's initializers (TensorProto field 14 set to 1). Strings that
    occur twice (concatenated messages merge) keep the last value, as protobuf does.

    Raises:
        PolicyLoadError: the bytes are not a parseable ModelProto (no path: the caller
            names the file).
    """
    ir_version = 0
    opsets: dict[str, int] = {}
    external = False
    producer = version = ""
    for number, wire, value in _top_level_fields(data):
        if number == 1 and wire == 0:
            ir_version = int(value)  # type: ignore[arg-type]
        elif number == 2 and wire == 2:
            producer = _text(value)
        elif number == 3 and wire == 2:
            version = _text(value)
        elif number == 8 and wire == 2:
            domain, opset = "", 0
            for n2, w2, v2 in _top_level_fields(bytes(value)):  # type: ignore[arg-type]
                if n2 == 1 and w2 == 2:
                    domain = _text(v2)
                elif n2 == 2 and w2 == 0:
                    opset = int(v2)  # type: ignore[arg-type]
            opsets[domain] = opset
        elif number == 7 and wire == 2:
            for n2, w2, v2 in _top_level_fields(bytes(value)):  # type: ignore[arg-type]
                if n2 == 5 and w2 == 2:  # initializer
                    for n3, w3, v3 in _top_level_fields(bytes(v2)):  # type: ignore[arg-type]
                        if n3 == 14 and w3 == 0 and v3 == 1:  # data_location = EXTERNAL
                            external = True
    return ModelHeader(ir_version, opsets, external, producer, version)


def model(
    nodes: Iterable[bytes],
    inputs: Iterable[bytes],
    outputs: Iterable[bytes],
    initializers: Iterable[bytes] = (),
    *,
    opset: int = 17,
    ir_version: int = 8,
    producer: str = "tailguard",
    producer_version: str = "",
    metadata: dict[str, str] | None = None,
) -> bytes:
    """A complete ModelProto (ir_version=1, producer_name=2, producer_version=3, graph=7,
    opset_import=8, metadata_props=14)."""
    graph = graph_extension(nodes, inputs, outputs, initializers)
    body = _int_field(1, ir_version) + _str(2, producer)
    if producer_version:
        body += _str(3, producer_version)
    body += graph
    body += _field(8, _str(1, "") + _int_field(2, opset))
    for key, value in (metadata or {}).items():
        body += _field(14, _str(1, key) + _str(2, value))
    # graph_extension() already wrapped the graph in field 7; name it for readability
    return body + _field(7, _str(2, "tailguard_graph"))
