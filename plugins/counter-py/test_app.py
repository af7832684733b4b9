"""Unit tests of the Python counter, run natively: ``python3 -m unittest`` in this folder with
``guest-sdk/python`` on ``PYTHONPATH`` (``cargo xtask test`` does both)."""

import unittest

import weft

import app


def run(state, command):
    ctx = weft.Context.for_test("counter", "c1")
    decision = app.handle(state, ctx, command)
    for event in decision.events:
        state = app.apply(state, ctx, event)
    return state, decision.reply


class CounterTest(unittest.TestCase):
    def test_increments_and_decrements(self):
        state, reply = run(app.init(None), {"op": "increment", "by": 5})
        self.assertEqual((state, reply), ({"value": 5}, {"value": 5}))
        state, reply = run(state, {"op": "decrement", "by": 2})
        self.assertEqual((state, reply), ({"value": 3}, {"value": 3}))

    def test_rejects_a_decrement_below_the_floor(self):
        with self.assertRaises(weft.Rejected) as rejected:
            run({"value": 3}, {"op": "decrement", "by": 4})
        self.assertEqual(str(rejected.exception), "decrement by 4: the value 3 would go below the floor 0")

    def test_rejects_non_positive_amounts_overflow_and_bad_commands(self):
        for command in ({"op": "increment", "by": 0}, {"op": "decrement", "by": -1}):
            with self.assertRaises(weft.Rejected):
                run({"value": 0}, command)
        with self.assertRaises(weft.Rejected) as overflow:
            run({"value": app.I64_MAX}, {"op": "increment", "by": 1})
        self.assertIn("overflow", str(overflow.exception))
        for command in ({"op": "explode"}, {"op": "increment", "by": "1"}, [1, 2]):
            with self.assertRaises(weft.Rejected) as bad:
                run({"value": 0}, command)
            self.assertTrue(str(bad.exception).startswith("cannot decode command"))

    def test_reset_and_get(self):
        self.assertEqual(run({"value": 9}, {"op": "reset"}), ({"value": 0}, {"value": 0}))
        decision = app.handle({"value": 4}, weft.Context.for_test("counter", "c1"), {"op": "get"})
        self.assertEqual((decision.events, decision.reply), ([], {"value": 4}))

    def test_events_encode_like_the_rust_plugin(self):
        ctx = weft.Context.for_test("counter", "c1")
        events, reply = weft.entity.handle_bytes(
            app.handle, ctx, weft.encode({"value": 0}), weft.encode({"op": "increment", "by": 2})
        )
        # {"type": "incremented", "by": 2}: the tag first, as serde's internally tagged enums.
        self.assertEqual(events, [b"\x82\xa4type\xabincremented\xa2by\x02"])
        self.assertEqual(reply, b"\x81\xa5value\x02")


if __name__ == "__main__":
    unittest.main()
