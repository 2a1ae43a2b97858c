"""A reader of the protocol-buffers wire format, enough for Caffe's ``.caffemodel`` files.

A message is a sequence of fields, each a key varint ``(field_number << 3) | wire_type`` and a value:
wire type 0 a varint, 1 eight bytes, 2 a length varint and that many bytes (a string, a sub-message
or a packed repeated scalar), 5 four bytes. Groups (types 3, 4) are obsolete and refused. Values are
returned as they are on the wire; the schema (which field is a message, a float, a packed list) is
the caller's, taken from ``caffe.proto``. Decoders follow the protobuf rule that a repeated scalar
may arrive packed (one type-2 field) or unpacked (one field per value), and that for a non-repeated
field the last occurrence wins.
"""
from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterator

import numpy as np

__all__ = ["WireError", "iter_fields", "message_fields", "last", "as_text", "as_floats", "as_varints", "last_float"]

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message (truncated, or an invalid key)."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` of each field of one message, in file order.

    value: an int for varints; a memoryview of the bytes for the other types (8, length, 4 bytes).
    Raises :class:`WireError` on malformed input.
    """
    buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == LENGTH:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise WireError(f"field {number}: {length} bytes announced at byte {pos}, {end - pos} left")
            value, pos = buf[pos:pos + length], pos + length
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            if pos + size > end:
                raise WireError(f"field {number}: truncated fixed-size value at byte {pos}")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise WireError(f"field {number}: unsupported wire type {wire} at byte {pos}")
        yield number, wire, value


def message_fields(buf: bytes | memoryview) -> dict[int, list[tuple[int, int | memoryview]]]:
    """All fields of one message grouped by number: ``{number: [(wire type, value), ...]}`` in order."""
    out: dict[int, list] = defaultdict(list)
    for number, wire, value in iter_fields(buf):
        out[number].append((wire, value))
    return out


def last(fields: dict, number: int, default=None):
    """The value of a non-repeated field (its last occurrence), or ``default`` when absent."""
    entries = fields.get(number)
    return entries[-1][1] if entries else default


def as_text(value: memoryview) -> str:
    """A string field (UTF-8)."""
    return bytes(value).decode("utf-8", errors="replace")


def last_float(fields: dict, number: int, default: float) -> float:
    """The value of a non-repeated ``float`` field (its last occurrence), or ``default`` when absent."""
    if number not in fields:
        return default
    wire, value = fields[number][-1]
    if wire != FIXED32:
        raise WireError(f"expected a 32-bit float, got wire type {wire}")
    return struct.unpack("<f", value)[0]


def as_floats(entries: list[tuple[int, int | memoryview]], double: bool = False) -> np.ndarray:
    """A repeated ``float`` (or ``double``) field, packed or not -> ``ndarray`` float32 (float64)."""
    kind, dtype, single = ("double", np.dtype("<f8"), FIXED64) if double else ("float", np.dtype("<f4"), FIXED32)
    parts = [np.zeros(0, dtype)]
    for wire, value in entries:
        if wire not in (LENGTH, single):
            raise WireError(f"expected {kind} values, got wire type {wire}")
        if len(value) % dtype.itemsize:  # (a single value has the size: only a packed field can be cut)
            raise WireError(f"packed {kind} field of {len(value)} bytes")
        parts.append(np.frombuffer(value, dtype=dtype))
    return np.concatenate(parts).astype(np.float64 if double else np.float32)


def as_varints(entries: list[tuple[int, int | memoryview]]) -> list[int]:
    """A repeated integer (or bool / enum) field, packed or not -> list of ints (two's complement
    64-bit values returned as negative numbers)."""
    out = []
    for wire, value in entries:
        if wire == VARINT:
            out.append(value)
        elif wire == LENGTH:
            pos = 0
            while pos < len(value):
                v, pos = _varint(value, pos)
                out.append(v)
        else:
            raise WireError(f"expected integer values, got wire type {wire}")
    return [v - (1 << 64) if v >= 1 << 63 else v for v in out]
