"""Unit tests of the Python highest-bid resolver, run natively: ``python3 -m unittest`` in this
folder with ``guest-sdk/python`` on ``PYTHONPATH`` (``cargo xtask test`` does both)."""

import unittest

import weft

import app


def bid(amount, replica):
    return weft.Envelope(meta=weft.EventMeta(origin_replica=replica), event={"amount": amount})


def resolve(incoming, concurrent):
    return app.resolve({}, weft.Context.for_test("auction", "a1"), incoming, concurrent)


class HighestBidTest(unittest.TestCase):
    def test_the_highest_bid_wins(self):
        self.assertEqual(resolve(bid(10, "b"), [bid(7, "a")]), weft.KEEP)
        self.assertEqual(resolve(bid(7, "a"), [bid(10, "b")]), weft.DROP)

    def test_ties_go_to_the_lower_replica(self):
        self.assertEqual(resolve(bid(5, "a"), [bid(5, "b")]), weft.KEEP)
        self.assertEqual(resolve(bid(5, "b"), [bid(5, "a")]), weft.DROP)

    def test_non_bids_are_kept_and_ignored(self):
        note = weft.Envelope(meta=weft.EventMeta(origin_replica="z"), event={"text": "hi"})
        self.assertEqual(resolve(note, [bid(5, "a")]), weft.KEEP)
        self.assertEqual(resolve(bid(1, "z"), [note]), weft.KEEP)

    def test_over_bytes_like_the_host_calls_it(self):
        meta = weft.EventMeta(origin_replica="b")
        resolution = weft.resolver.resolve_bytes(
            app.resolve,
            weft.Context.for_test("auction", "a1"),
            weft.encode(None),
            (meta, weft.encode({"amount": 3})),
            [(weft.EventMeta(origin_replica="a"), weft.encode({"amount": 4}))],
        )
        self.assertEqual(resolution, weft.DROP)


if __name__ == "__main__":
    unittest.main()
