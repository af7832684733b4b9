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

    def test_over_bytes_as_the_host_calls_it(self):
        events, reply = weft.entity.handle_bytes(
            app.handle, CTX, weft.encode({"total": 1}), weft.encode({"op": "add", "by": 2})
        )
        self.assertEqual([weft.decode(event) for event in events], [{"type": "added", "by": 2}])
        self.assertEqual(weft.decode(reply), {"total": 3})


if __name__ == "__main__":
    unittest.main()
