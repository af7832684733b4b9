"""The resident entity's batch logic, and the exported resource as componentize-py calls it.

Run natively from ``guest-sdk/python``: ``python3 -m unittest discover tests``.
"""

import dataclasses
import sys
import types
import unittest

import weft
from weft.entity import Plugin, nth_event_meta


def init(ctx):
    return {"items": [], "seen": []}


def handle(state, ctx, command):
    """An order-sensitive list: ``push`` appends (one event per item), ``pop`` removes the last."""
    op = command.get("op") if isinstance(command, dict) else None
    if op == "push":
        items = command["items"]
        return weft.Decision(
            events=[{"pushed": item} for item in items], reply=state["items"] + items
        )
    if op == "pop":
        if not state["items"]:
            raise weft.Rejected("nothing to pop")
        return weft.Decision(events=[{"popped": True}], reply=state["items"][-1])
    if op == "bug":
        return "not a decision"
    raise weft.Rejected(f"unknown op {op!r}")


def apply(state, ctx, event):
    """Folds an event, recording the metadata and clock it was folded with."""
    meta = ctx.event
    seen = state["seen"] + [[meta.seq_nr, meta.origin_seq_nr, meta.version, ctx.now]]
    if "pushed" in event:
        return {"items": state["items"] + [event["pushed"]], "seen": seen}
    return {"items": state["items"][:-1], "seen": seen}


PLUGIN = Plugin(init, handle, apply)
CTX = dataclasses.replace(weft.Context.for_test("list", "l1"), now=500)
FIRST = weft.EventMeta(
    persistence_id="list|l1",
    seq_nr=10,
    timestamp=777,
    origin_replica="local",
    origin_seq_nr=4,
    version={"local": 4, "other": 9},
)


def push(*items):
    return weft.encode({"op": "push", "items": list(items)})


POP = weft.encode({"op": "pop"})


class BatchTest(unittest.TestCase):
    def test_each_command_sees_the_events_of_the_ones_before_it(self):
        entity = weft.Resident(PLUGIN, CTX, None)
        outcomes = entity.handle(CTX, FIRST, [push("a"), push("b"), POP, push("c")])
        replies = [weft.decode(reply) for _, reply in outcomes]
        self.assertEqual(replies, [["a"], ["a", "b"], "b", ["a", "c"]])
        self.assertEqual(
            [[weft.decode(event) for event in events] for events, _ in outcomes],
            [[{"pushed": "a"}], [{"pushed": "b"}], [{"popped": True}], [{"pushed": "c"}]],
        )
        self.assertEqual(weft.decode(entity.snapshot())["items"], ["a", "c"])

    def test_a_rejection_in_the_middle_changes_nothing_and_the_batch_goes_on(self):
        entity = weft.Resident(PLUGIN, CTX, None)
        outcomes = entity.handle(CTX, FIRST, [push("a"), POP, POP, push("b")])
        self.assertEqual(weft.decode(outcomes[1][1]), "a")
        self.assertIsInstance(outcomes[2], weft.Rejected)
        self.assertEqual(outcomes[2].message, "nothing to pop")
        self.assertEqual(weft.decode(outcomes[3][1]), ["b"])
        state = weft.decode(entity.snapshot())
        self.assertEqual(state["items"], ["b"])
        # Three events were folded, numbered without a gap where the rejection was.
        self.assertEqual([seen[0] for seen in state["seen"]], [10, 11, 12])

    def test_a_command_that_does_not_decode_is_its_own_rejection(self):
        entity = weft.Resident(PLUGIN, CTX, None)
        outcomes = entity.handle(CTX, FIRST, [b"\xc1", push("a")])
        self.assertIsInstance(outcomes[0], weft.Rejected)
        self.assertTrue(outcomes[0].message.startswith("cannot decode command"))
        self.assertEqual(weft.decode(outcomes[1][1]), ["a"])

    def test_a_handler_bug_fails_the_call(self):
        entity = weft.Resident(PLUGIN, CTX, None)
        with self.assertRaises(TypeError):
            entity.handle(CTX, FIRST, [weft.encode({"op": "bug"})])

    def test_a_handler_bug_is_logged_with_its_traceback(self):
        logged = []
        entity_module = sys.modules["weft.entity"]
        real_log = entity_module.log
        entity_module.log = lambda level, message: logged.append((level, message))
        try:
            entity = weft.Resident(PLUGIN, CTX, None)
            with self.assertRaises(TypeError):
                entity_module._logged("handle", entity.handle, CTX, FIRST, [weft.encode({"op": "bug"})])
        finally:
            entity_module.log = real_log
        [(level, message)] = logged
        self.assertEqual(level, entity_module.Level.ERROR)
        self.assertTrue(message.startswith("handle failed: TypeError: "), message)
        self.assertIn("Traceback (most recent call last):", message)
        self.assertRegex(message, r'File ".*entity\.py", line \d+, in _encode_decision')

    def test_the_ith_event_of_the_batch_folds_with_the_ith_metadata_and_its_own_time(self):
        entity = weft.Resident(PLUGIN, CTX, None)
        entity.handle(CTX, FIRST, [push("a", "b"), POP, push("c")])
        seen = weft.decode(entity.snapshot())["seen"]
        self.assertEqual(
            seen,
            [
                [10, 4, {"local": 4, "other": 9}, 777],
                [11, 5, {"local": 5, "other": 9}, 777],
                [12, 6, {"local": 6, "other": 9}, 777],
                [13, 7, {"local": 7, "other": 9}, 777],
            ],
        )
        # The metadata handed in is not changed.
        self.assertEqual((FIRST.seq_nr, FIRST.version), (10, {"local": 4, "other": 9}))

    def test_a_version_without_this_replicas_entry_stays_as_given(self):
        first = dataclasses.replace(FIRST, version={"other": 9})
        meta = nth_event_meta(first, 3, "local")
        self.assertEqual((meta.seq_nr, meta.origin_seq_nr, meta.version), (13, 7, {"other": 9}))
        self.assertEqual((meta.writer, meta.timestamp, meta.persistence_id), ("", 777, "list|l1"))


class StateTest(unittest.TestCase):
    def test_apply_folds_envelopes_in_order_with_their_metadata(self):
        entity = weft.Resident(PLUGIN, CTX, None)
        metas = [dataclasses.replace(FIRST, seq_nr=n, timestamp=100 + n) for n in (1, 2)]
        entity.apply(CTX, [(metas[0], weft.encode({"pushed": "x"})), (metas[1], weft.encode({"popped": True}))])
        state = weft.decode(entity.snapshot())
        self.assertEqual(state["items"], [])
        self.assertEqual([(seen[0], seen[3]) for seen in state["seen"]], [(1, 101), (2, 102)])

    def test_a_snapshot_restores_the_same_state(self):
        entity = weft.Resident(PLUGIN, CTX, None)
        entity.handle(CTX, FIRST, [push("a", "b")])
        restored = weft.Resident(PLUGIN, CTX, entity.snapshot())
        self.assertEqual(restored.state, entity.state)
        outcomes = restored.handle(CTX, FIRST, [POP])
        self.assertEqual(weft.decode(outcomes[0][1]), "b")

    def test_on_lease_lost_publishes_the_authors_value_or_nothing(self):
        lost = weft.LeaseLost(fencing_token=3, reason="expired")
        self.assertIsNone(weft.Resident(PLUGIN, CTX, None).on_lease_lost(CTX, lost))

        def notice(state, ctx, lost):
            return {"token": lost.fencing_token, "items": len(state["items"])}

        entity = weft.Resident(PLUGIN._replace(on_lease_lost=notice), CTX, None)
        self.assertEqual(weft.decode(entity.on_lease_lost(CTX, lost)), {"token": 3, "items": 0})


def wit_record(**fields):
    return types.SimpleNamespace(**fields)


class Generated:
    """Stand-ins for the modules componentize-py generates, as the resource imports them."""

    class Ok:
        def __init__(self, value):
            self.value = value

    class Err(Exception):
        def __init__(self, value):
            super().__init__(value)
            self.value = value

    def __enter__(self):
        runtime = types.ModuleType("componentize_py_types")
        runtime.Ok, runtime.Err = Generated.Ok, Generated.Err
        exports = types.ModuleType("wit_world.exports.resident_entity")
        exports.Decision = lambda events, reply: wit_record(events=events, reply=reply)
        self.modules = {
            "componentize_py_types": runtime,
            "wit_world": types.ModuleType("wit_world"),
            "wit_world.exports": types.ModuleType("wit_world.exports"),
            "wit_world.exports.resident_entity": exports,
        }
        self.modules["wit_world"].exports = self.modules["wit_world.exports"]
        self.modules["wit_world.exports"].resident_entity = exports
        sys.modules.update(self.modules)
        return self

    def __exit__(self, *exc):
        for name in self.modules:
            del sys.modules[name]


WIT_CTX = wit_record(
    entity_type="list",
    entity_id="l1",
    replica="local",
    all_replicas=["local"],
    now=500,
    recovery_running=False,
    role=wit_record(name="WRITER"),
)
WIT_FIRST = wit_record(
    persistence_id="list|l1",
    seq_nr=10,
    writer="w",
    fencing_token=0,
    timestamp=777,
    origin_replica="local",
    origin_seq_nr=4,
    version=[wit_record(replica="local", counter=4)],
    concurrent=False,
)


class ExportedResourceTest(unittest.TestCase):
    def test_export_entity_publishes_the_resource_componentize_py_looks_for(self):
        weft.export_entity(init=init, handle=handle, apply=apply)
        resource = sys.modules["resident_entity"].Entity
        with Generated():
            entity = resource(WIT_CTX, None)
            outcomes = entity.handle(WIT_CTX, WIT_FIRST, [push("a"), POP, POP])
            self.assertIsInstance(outcomes[0], Generated.Ok)
            self.assertEqual(weft.decode(outcomes[0].value.reply), ["a"])
            self.assertEqual(weft.decode(outcomes[1].value.events[0]), {"popped": True})
            self.assertIsInstance(outcomes[2], Generated.Err)
            self.assertEqual(outcomes[2].value, "nothing to pop")
            entity.apply(WIT_CTX, [wit_record(meta=WIT_FIRST, payload=weft.encode({"pushed": "z"}))])
            state = weft.decode(entity.snapshot())
            self.assertEqual(state["items"], ["z"])
            self.assertEqual(state["seen"][-1], [10, 4, {"local": 4}, 777])
            self.assertIsNone(entity.on_lease_lost(WIT_CTX, wit_record(fencing_token=1, reason="fenced")))
            restored = resource(WIT_CTX, entity.snapshot())
            self.assertEqual(restored.resident.state, entity.resident.state)


if __name__ == "__main__":
    unittest.main()
