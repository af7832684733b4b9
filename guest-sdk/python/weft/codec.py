"""MessagePack with named fields: the encoding of every payload that crosses the WIT boundary.

A pure-Python encoder and decoder (no C extension, so it runs inside componentize-py and in
plain ``python3``). Encoding picks the same formats as the Rust SDK's
``rmp_serde::to_vec_named``, so a dict written here is byte for byte what a Rust struct with
the same fields and values becomes: integers in their smallest format (non-negative ones as
unsigned), floats as float64, ``str`` as str, ``bytes`` as bin, dicts as maps in insertion order.

Every command, event and reply of a resident entity goes through here, so the common values —
exactly ``str``, ``int``, ``dict``, ``list``, short ones — take the shortest paths, and the
decoder walks the bytes by position instead of slicing.
"""

import struct

__all__ = ["encode", "decode", "CodecError", "Ext"]

# Nesting deeper than this is refused rather than risking Python's recursion limit.
DEPTH_MAX = 256

I64_MIN = -(1 << 63)
U64_MAX = (1 << 64) - 1


class CodecError(ValueError):
    """A value that cannot be encoded, or bytes that are not one MessagePack value."""


class Ext:
    """A MessagePack extension value, kept as its type code and raw data."""

    __slots__ = ("code", "data")

    def __init__(self, code, data):
        self.code = code
        self.data = bytes(data)

    def __eq__(self, other):
        return isinstance(other, Ext) and (self.code, self.data) == (other.code, other.data)

    def __hash__(self):
        return hash((self.code, self.data))

    def __repr__(self):
        return f"Ext({self.code}, {self.data!r})"


def encode(value):
    """Encodes ``value`` (None, bool, int, float, str, bytes, list, tuple, dict, Ext)."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


_FLOAT64 = struct.Struct(">Bd").pack


def _encode(value, out, depth):
    if depth > DEPTH_MAX:
        raise CodecError(f"cannot encode: nested deeper than {DEPTH_MAX} levels")
    # Exact types first (a bool is not an int here); subclasses and the rarer types after.
    kind = type(value)
    if kind is str:
        data = value.encode("utf-8")
        if len(data) < 32:
            out.append(0xA0 | len(data))
        else:
            _encode_length(len(data), out, fix=None, markers=(0xD9, 0xDA, 0xDB))
        out += data
    elif kind is int:
        if 0 <= value < 0x80:
            out.append(value)
        else:
            _encode_int(value, out)
    elif kind is dict:
        if len(value) < 16:
            out.append(0x80 | len(value))
        else:
            _encode_length(len(value), out, fix=None, markers=(None, 0xDE, 0xDF))
        for key, item in value.items():
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    elif kind is list:
        _encode_array(value, out, depth)
    elif value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif kind is float:
        out += _FLOAT64(0xCB, value)
    else:
        _encode_other(value, out, depth)


def _encode_array(value, out, depth):
    if len(value) < 16:
        out.append(0x90 | len(value))
    else:
        _encode_length(len(value), out, fix=None, markers=(None, 0xDC, 0xDD))
    for item in value:
        _encode(item, out, depth + 1)


def _encode_other(value, out, depth):
    """Subclasses of the common types, bytes, tuples and Ext."""
    if isinstance(value, bool):
        out.append(0xC3 if value else 0xC2)
    elif isinstance(value, int):
        _encode_int(int(value), out)
    elif isinstance(value, float):
        out += _FLOAT64(0xCB, value)
    elif isinstance(value, str):
        _encode(str(value), out, depth)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        _encode_length(len(data), out, fix=None, markers=(0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(value, (list, tuple)):
        _encode_array(value, out, depth)
    elif isinstance(value, dict):
        _encode(dict(value), out, depth)
    elif isinstance(value, Ext):
        _encode_ext(value, out)
    else:
        raise CodecError(f"cannot encode a value of type {type(value).__name__}")


def _encode_int(value, out):
    if value < I64_MIN or value > U64_MAX:
        raise CodecError(f"cannot encode {value}: outside the 64-bit integer range")
    if value >= 0:
        if value < 0x80:
            out.append(value)
        elif value <= 0xFF:
            out += struct.pack(">BB", 0xCC, value)
        elif value <= 0xFFFF:
            out += struct.pack(">BH", 0xCD, value)
        elif value <= 0xFFFFFFFF:
            out += struct.pack(">BI", 0xCE, value)
        else:
            out += struct.pack(">BQ", 0xCF, value)
    elif value >= -32:
        out += struct.pack(">b", value)
    elif value >= -0x80:
        out += struct.pack(">Bb", 0xD0, value)
    elif value >= -0x8000:
        out += struct.pack(">Bh", 0xD1, value)
    elif value >= -0x80000000:
        out += struct.pack(">Bi", 0xD2, value)
    else:
        out += struct.pack(">Bq", 0xD3, value)


def _encode_length(length, out, fix, markers):
    """Writes the header of a str, bin, array or map: its fix form if any, else 8/16/32-bit."""
    if fix is not None and length < fix[1]:
        out.append(fix[0] | length)
    elif markers[0] is not None and length <= 0xFF:
        out += struct.pack(">BB", markers[0], length)
    elif length <= 0xFFFF:
        out += struct.pack(">BH", markers[1], length)
    elif length <= 0xFFFFFFFF:
        out += struct.pack(">BI", markers[2], length)
    else:
        raise CodecError(f"cannot encode: {length} items or bytes is more than MessagePack holds")


def _encode_ext(value, out):
    size = len(value.data)
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if size in fixed:
        out.append(fixed[size])
    else:
        _encode_length(size, out, fix=None, markers=(0xC7, 0xC8, 0xC9))
    out += struct.pack(">b", value.code)
    out += value.data


def decode(data):
    """Decodes exactly one MessagePack value; maps become dicts, str becomes str, bin bytes."""
    data = bytes(data)
    value, pos = _value(data, 0, 0)
    if pos != len(data):
        raise CodecError(f"{len(data) - pos} bytes follow the MessagePack value")
    return value


def _end(data, pos, count):
    """Where ``count`` bytes from ``pos`` end, if the data holds them."""
    end = pos + count
    if end > len(data):
        raise CodecError(f"unexpected end of data at byte {pos} (wanted {count} more)")
    return end


def _value(data, pos, depth):
    """The value starting at ``pos``, and the position after it."""
    if depth > DEPTH_MAX:
        raise CodecError(f"nested deeper than {DEPTH_MAX} levels")
    if pos >= len(data):
        raise CodecError(f"unexpected end of data at byte {pos} (wanted 1 more)")
    marker = data[pos]
    pos += 1
    if marker <= 0x7F:
        return marker, pos
    if marker >= 0xE0:
        return marker - 0x100, pos
    if marker >= 0xA0 and marker <= 0xBF:
        return _text(data, pos, marker & 0x1F)
    if marker <= 0x8F:
        return _map(data, pos, marker & 0x0F, depth)
    if marker <= 0x9F:
        return _array(data, pos, marker & 0x0F, depth)
    simple = _SIMPLE.get(marker)
    if simple is not None:
        kind, fmt = simple
        if kind == "const":
            return fmt, pos
        end = _end(data, pos, fmt.size)
        number = fmt.unpack_from(data, pos)[0]
        if kind == "number":
            return number, end
        if kind == "str":
            return _text(data, end, number)
        if kind == "bin":
            stop = _end(data, end, number)
            return data[end:stop], stop
        if kind == "array":
            return _array(data, end, number, depth)
        if kind == "map":
            return _map(data, end, number, depth)
        return _ext(data, end, number)
    if 0xD4 <= marker <= 0xD8:
        return _ext(data, pos, 1 << (marker - 0xD4))
    raise CodecError(f"byte 0x{marker:02x} at {pos - 1} starts no MessagePack value")


def _text(data, pos, size):
    end = _end(data, pos, size)
    try:
        return data[pos:end].decode("utf-8"), end
    except UnicodeDecodeError as error:
        raise CodecError(f"a string is not UTF-8: {error}") from None


def _array(data, pos, size, depth):
    items = []
    for _ in range(size):
        item, pos = _value(data, pos, depth + 1)
        items.append(item)
    return items, pos


def _map(data, pos, size, depth):
    result = {}
    for _ in range(size):
        key, pos = _value(data, pos, depth + 1)
        if isinstance(key, (list, dict)):
            raise CodecError("a map key is an array or a map, which Python cannot use as a key")
        result[key], pos = _value(data, pos, depth + 1)
    return result, pos


def _ext(data, pos, size):
    end = _end(data, pos, 1)
    code = struct.unpack_from(">b", data, pos)[0]
    stop = _end(data, end, size)
    return Ext(code, data[end:stop]), stop


def _marker(kind, fmt):
    return kind, struct.Struct(fmt)


# Markers whose value (or length) is one fixed-size field: (kind, struct or constant).
_SIMPLE = {
    0xC0: ("const", None),
    0xC2: ("const", False),
    0xC3: ("const", True),
    0xC4: _marker("bin", ">B"),
    0xC5: _marker("bin", ">H"),
    0xC6: _marker("bin", ">I"),
    0xC7: _marker("ext", ">B"),
    0xC8: _marker("ext", ">H"),
    0xC9: _marker("ext", ">I"),
    0xCA: _marker("number", ">f"),
    0xCB: _marker("number", ">d"),
    0xCC: _marker("number", ">B"),
    0xCD: _marker("number", ">H"),
    0xCE: _marker("number", ">I"),
    0xCF: _marker("number", ">Q"),
    0xD0: _marker("number", ">b"),
    0xD1: _marker("number", ">h"),
    0xD2: _marker("number", ">i"),
    0xD3: _marker("number", ">q"),
    0xD9: _marker("str", ">B"),
    0xDA: _marker("str", ">H"),
    0xDB: _marker("str", ">I"),
    0xDC: _marker("array", ">H"),
    0xDD: _marker("array", ">I"),
    0xDE: _marker("map", ">H"),
    0xDF: _marker("map", ">I"),
}
