"""{{name}}: a weft entity in Python.

Commands (JSON over the HTTP API, MessagePack inside): ``{"op": "add", "by": 3}`` adds to the
total, ``{"op": "get"}`` reads it.
"""

import weft


def init(ctx):
    """The state of an entity with no events yet."""
    return {"total": 0}


def handle(state, ctx, command):
    """Decides what a command does: events to persist and a reply, or a rejection."""
    op = command.get("op") if isinstance(command, dict) else None
    if op == "add":
        by = command.get("by")
        if isinstance(by, bool) or not isinstance(by, int) or by <= 0:
            raise weft.Rejected("add: `by` must be a positive integer")
        return weft.Decision(
            events=[{"type": "added", "by": by}], reply={"total": state["total"] + by}
        )
    if op == "get":
        return weft.Decision(reply={"total": state["total"]})
    raise weft.Rejected(f"unknown op {op!r}: expected add or get")


def apply(state, ctx, event):
    """Folds one event into the state. Deterministic: replay and replication depend on it."""
    if event["type"] == "added":
        return {"total": state["total"] + event["by"]}
    return state


# Built for `resident-entity-plugin`: each active entity's state stays decoded in the guest.
Entity = weft.export_entity(init=init, handle=handle, apply=apply)
