"""Unit tests of the faulty Python entity, run natively: ``python3 -m unittest`` in this folder
with ``guest-sdk/python`` on ``PYTHONPATH`` (``cargo xtask test`` does both)."""

import unittest

import weft

import app


class FaultyTest(unittest.TestCase):
    def test_a_note_is_recorded(self):
        decision = app.handle(app.init(None), None, {"op": "note", "text": "hi"})
        self.assertEqual(decision.events, [{"text": "hi"}])

    def test_dividing_by_zero_is_a_bug_not_a_refusal(self):
        with self.assertRaises(ZeroDivisionError):
            app.handle(app.init(None), None, {"op": "divide", "by": 0})
        with self.assertRaises(weft.Rejected):
            app.handle(app.init(None), None, {"op": "other"})


if __name__ == "__main__":
    unittest.main()
