"""Unit tests of {{name}}, run natively: ``python3 -m unittest``."""

import unittest

import weft

import app

CTX = weft.Context.for_test("{{name}}", "e1")


def run(state, command):
    decision = app.handle(state, CTX, command)
    for event in decision.events:
        state = app.apply(state, CTX, event)
    return state, decision.reply


class EntityTest(unittest.TestCase):
    def test_add_then_get(self):
        state, reply = run(app.init(CTX), {"op": "add", "by": 3})
        self.assertEqual((state, reply), ({"total": 3}, {"total": 3}))
        self.assertEqual(run(state, {"op": "get"}), (state, {"total": 3}))

    def test_rejects_bad_commands(self):
        for command in ({"op": "add", "by": 0}, {"op": "add"}, {"op": "explode"}):
            with self.subTest(command=command), self.assertRaises(weft.Rejected):
                run({"total": 0}, command)

    def test_a_batch_over_bytes_as_the_host_hands_it_over(self):
        entity = weft.Resident(weft.Plugin(app.init, app.handle, app.apply), CTX, None)
        first = weft.EventMeta(persistence_id="{{name}}|e1", seq_nr=1, origin_seq_nr=1)
        commands = [{"op": "add", "by": 2}, {"op": "add", "by": 0}, {"op": "add", "by": 3}]
        added, rejected, after = entity.handle(CTX, first, [weft.encode(c) for c in commands])
        self.assertEqual([weft.decode(event) for event in added[0]], [{"type": "added", "by": 2}])
        self.assertIsInstance(rejected, weft.Rejected)
        self.assertEqual(weft.decode(after[1]), {"total": 5})
        self.assertEqual(weft.decode(entity.snapshot()), {"total": 5})


if __name__ == "__main__":
    unittest.main()
