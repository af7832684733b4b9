"""MessagePack with named fields: the encoding of every payload that crosses the WIT boundary.

A pure-Python encoder and decoder (no C extension, so it runs inside componentize-py and in
plain ``python3``). Encoding picks the same formats as the Rust SDK's
``rmp_serde::to_vec_named``, so a dict written here is byte for byte what a Rust struct with
the same fields and values becomes: integers in their smallest format (non-negative ones as
unsigned), floats as float64, ``str`` as str, ``bytes`` as bin, dicts as maps in insertion order.
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


def _encode(value, out, depth):
    if depth > DEPTH_MAX:
        raise CodecError(f"cannot encode: nested deeper than {DEPTH_MAX} levels")
    if value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif isinstance(value, int):
        _encode_int(value, out)
    elif isinstance(value, float):
        out.append(0xCB)
        out += struct.pack(">d", value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        _encode_length(len(data), out, fix=(0xA0, 32), markers=(0xD9, 0xDA, 0xDB))
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        _encode_length(len(data), out, fix=None, markers=(0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(value, (list, tuple)):
        _encode_length(len(value), out, fix=(0x90, 16), markers=(None, 0xDC, 0xDD))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        _encode_length(len(value), out, fix=(0x80, 16), markers=(None, 0xDE, 0xDF))
        for key, item in value.items():
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
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
    reader = _Reader(bytes(data))
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise CodecError(f"{len(reader.data) - reader.pos} bytes follow the MessagePack value")
    return value


class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, count):
        end = self.pos + count
        if end > len(self.data):
            raise CodecError(f"unexpected end of data at byte {self.pos} (wanted {count} more)")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def value(self, depth):
        if depth > DEPTH_MAX:
            raise CodecError(f"nested deeper than {DEPTH_MAX} levels")
        marker = self.take(1)[0]
        if marker <= 0x7F:
            return marker
        if marker >= 0xE0:
            return marker - 0x100
        if 0x80 <= marker <= 0x8F:
            return self.map(marker & 0x0F, depth)
        if 0x90 <= marker <= 0x9F:
            return self.array(marker & 0x0F, depth)
        if 0xA0 <= marker <= 0xBF:
            return self.text(marker & 0x1F)
        simple = _SIMPLE.get(marker)
        if simple is not None:
            kind, fmt = simple
            if kind == "const":
                return fmt
            if kind == "number":
                return self.unpack(fmt)
            size = self.unpack(fmt)
            if kind == "str":
                return self.text(size)
            if kind == "bin":
                return self.take(size)
            if kind == "array":
                return self.array(size, depth)
            if kind == "map":
                return self.map(size, depth)
            return self.ext(size)
        if 0xD4 <= marker <= 0xD8:
            return self.ext(1 << (marker - 0xD4))
        raise CodecError(f"byte 0x{marker:02x} at {self.pos - 1} starts no MessagePack value")

    def text(self, size):
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError as error:
            raise CodecError(f"a string is not UTF-8: {error}") from None

    def array(self, size, depth):
        return [self.value(depth + 1) for _ in range(size)]

    def map(self, size, depth):
        result = {}
        for _ in range(size):
            key = self.value(depth + 1)
            if isinstance(key, (list, dict)):
                raise CodecError("a map key is an array or a map, which Python cannot use as a key")
            result[key] = self.value(depth + 1)
        return result

    def ext(self, size):
        code = self.unpack(">b")
        return Ext(code, self.take(size))


# Markers whose value (or length) is one fixed-size field: (kind, struct format or constant).
_SIMPLE = {
    0xC0: ("const", None),
    0xC2: ("const", False),
    0xC3: ("const", True),
    0xC4: ("bin", ">B"),
    0xC5: ("bin", ">H"),
    0xC6: ("bin", ">I"),
    0xC7: ("ext", ">B"),
    0xC8: ("ext", ">H"),
    0xC9: ("ext", ">I"),
    0xCA: ("number", ">f"),
    0xCB: ("number", ">d"),
    0xCC: ("number", ">B"),
    0xCD: ("number", ">H"),
    0xCE: ("number", ">I"),
    0xCF: ("number", ">Q"),
    0xD0: ("number", ">b"),
    0xD1: ("number", ">h"),
    0xD2: ("number", ">i"),
    0xD3: ("number", ">q"),
    0xD9: ("str", ">B"),
    0xDA: ("str", ">H"),
    0xDB: ("str", ">I"),
    0xDC: ("array", ">H"),
    0xDD: ("array", ">I"),
    0xDE: ("map", ">H"),
    0xDF: ("map", ">I"),
}
