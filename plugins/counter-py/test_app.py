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

    def test_a_batch_as_the_host_hands_it_over(self):
        ctx = weft.Context.for_test("counter", "c1")
        first = weft.EventMeta(persistence_id="counter|c1", seq_nr=1, origin_seq_nr=1)
        counter = weft.Resident(weft.Plugin(app.init, app.handle, app.apply), ctx, None)
        commands = [
            {"op": "increment", "by": 5},
            {"op": "decrement", "by": 6},
            {"op": "decrement", "by": 5},
            {"op": "get"},
        ]
        outcomes = counter.handle(ctx, first, [weft.encode(command) for command in commands])
        self.assertEqual(weft.decode(outcomes[0][1]), {"value": 5})
        self.assertEqual(str(outcomes[1]), "decrement by 6: the value 5 would go below the floor 0")
        self.assertEqual(weft.decode(outcomes[2][1]), {"value": 0})
        self.assertEqual(outcomes[3], ([], weft.encode({"value": 0})))
        self.assertEqual(weft.decode(counter.snapshot()), {"value": 0})


if __name__ == "__main__":
    unittest.main()
