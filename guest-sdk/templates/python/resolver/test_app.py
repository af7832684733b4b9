"""Unit tests of {{name}}, run natively: ``python3 -m unittest``."""

import unittest

import weft

import app

CTX = weft.Context.for_test("{{name}}", "e1")


def event(payload, replica="a"):
    return weft.Envelope(meta=weft.EventMeta(origin_replica=replica), event=payload)


class ResolverTest(unittest.TestCase):
    def test_a_concurrent_deletion_wins(self):
        incoming = event({"type": "renamed", "to": "x"}, "b")
        self.assertEqual(app.resolve(None, CTX, incoming, [event({"type": "deleted"})]), weft.DROP)

    def test_everything_else_is_kept(self):
        incoming = event({"type": "renamed", "to": "x"}, "b")
        self.assertEqual(app.resolve(None, CTX, incoming, []), weft.KEEP)
        self.assertEqual(app.resolve(None, CTX, incoming, [event({"type": "renamed"})]), weft.KEEP)


if __name__ == "__main__":
    unittest.main()
