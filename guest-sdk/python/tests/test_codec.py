"""The MessagePack codec against the shared vectors (the bytes rmp_serde writes), and its errors.

Run natively from ``guest-sdk/python``: ``python3 -m unittest discover tests``.
"""

import json
import math
import pathlib
import unittest

from weft import codec

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "testdata" / "msgpack-vectors.json"


def revive(value):
    """Undoes the ``{"$int": "digits"}`` wrapping of integers beyond ±(2^53-1)."""
    if isinstance(value, dict) and list(value) == ["$int"]:
        return int(value["$int"])
    if isinstance(value, list):
        return [revive(item) for item in value]
    if isinstance(value, dict):
        return {key: revive(item) for key, item in value.items()}
    return value


class VectorsTest(unittest.TestCase):
    def test_encodes_every_vector_byte_for_byte_and_decodes_it_back(self):
        vectors = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
        self.assertGreater(len(vectors), 40)
        for vector in vectors:
            value = revive(vector["value"])
            with self.subTest(value=value):
                self.assertEqual(codec.encode(value).hex(), vector["msgpack"])
                self.assertEqual(codec.decode(bytes.fromhex(vector["msgpack"])), value)


class CodecTest(unittest.TestCase):
    def test_bytes_tuples_and_ext(self):
        self.assertEqual(codec.encode(b"\x01\x02"), b"\xc4\x02\x01\x02")
        self.assertEqual(codec.decode(b"\xc4\x02\x01\x02"), b"\x01\x02")
        self.assertEqual(codec.encode((1, 2)), codec.encode([1, 2]))
        ext = codec.Ext(5, b"abcd")
        self.assertEqual(codec.decode(codec.encode(ext)), ext)

    def test_float32_decodes(self):
        self.assertEqual(codec.decode(b"\xca\x3f\xc0\x00\x00"), 1.5)
        self.assertTrue(math.isnan(codec.decode(codec.encode(float("nan")))))

    def test_refuses_what_it_cannot_encode(self):
        for value in (1 << 64, -(1 << 63) - 1, object(), {1, 2}):
            with self.subTest(value=value), self.assertRaises(codec.CodecError):
                codec.encode(value)
        deep = []
        for _ in range(codec.DEPTH_MAX + 2):
            deep = [deep]
        with self.assertRaises(codec.CodecError):
            codec.encode(deep)

    def test_refuses_malformed_bytes_with_a_reason(self):
        cases = {
            b"": "unexpected end",
            b"\xc1": "starts no MessagePack value",
            b"\x92\x01": "unexpected end",
            b"\xc0\xc0": "follow the MessagePack value",
            b"\xa2\xff\xfe": "not UTF-8",
            b"\x81\x90\x01": "map key",
        }
        for data, reason in cases.items():
            with self.subTest(data=data), self.assertRaises(codec.CodecError) as error:
                codec.decode(data)
            self.assertIn(reason, str(error.exception))

    def test_refuses_nesting_deeper_than_the_limit(self):
        data = b"\x91" * (codec.DEPTH_MAX + 2) + b"\xc0"
        with self.assertRaises(codec.CodecError):
            codec.decode(data)


if __name__ == "__main__":
    unittest.main()
