"""The counter entity in Python: the same commands, events, state, replies and errors as the
Rust plugin ``plugins/counter``, encoded to the same MessagePack bytes.

Commands: ``{"op": "increment", "by": 3}``, ``{"op": "decrement", "by": 1}``, ``{"op": "reset"}``,
``{"op": "get"}``. The value never goes below the floor of 0: a decrement that would is rejected
and persists nothing.
"""

import weft

# The lowest value a counter may hold.
FLOOR = 0

# The value is a signed 64-bit integer, as in the Rust plugin.
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1


def init(ctx):
    return {"value": FLOOR}


def amount(command, op):
    """The ``by`` of an increment or decrement; a command without one does not decode."""
    by = command.get("by")
    if isinstance(by, bool) or not isinstance(by, int) or not I64_MIN <= by <= I64_MAX:
        raise weft.Rejected(f"cannot decode command: `{op}` needs `by`, a 64-bit integer")
    return by


def handle(state, ctx, command):
    op = command.get("op") if isinstance(command, dict) else None
    value = state["value"]
    if op == "increment":
        by = amount(command, op)
        if by <= 0:
            raise weft.Rejected(f"increment by {by}: must be positive")
        if value + by > I64_MAX:
            raise weft.Rejected(f"increment by {by}: the value would overflow")
        return weft.Decision(events=[{"type": "incremented", "by": by}], reply={"value": value + by})
    if op == "decrement":
        by = amount(command, op)
        if by <= 0:
            raise weft.Rejected(f"decrement by {by}: must be positive")
        if value - by < FLOOR:
            raise weft.Rejected(
                f"decrement by {by}: the value {value} would go below the floor {FLOOR}"
            )
        return weft.Decision(events=[{"type": "decremented", "by": by}], reply={"value": value - by})
    if op == "reset":
        return weft.Decision(events=[{"type": "reset"}], reply={"value": FLOOR})
    if op == "get":
        return weft.Decision(reply={"value": value})
    raise weft.Rejected(
        f"cannot decode command: unknown op {op!r}, expected increment, decrement, reset or get"
    )


def apply(state, ctx, event):
    kind = event["type"]
    if kind == "incremented":
        return {"value": state["value"] + event["by"]}
    if kind == "decremented":
        return {"value": state["value"] - event["by"]}
    if kind == "reset":
        return {"value": FLOOR}
    raise ValueError(f"unknown event type {kind!r}")


Entity = weft.export_entity(init=init, handle=handle, apply=apply)
