"""A Python entity with a bug on purpose, for the tests of what a caller learns when a handler
raises: ``{"op": "note", "text": "..."}`` records the text; ``{"op": "divide", "by": 0}`` divides
the number of notes by ``by`` in a helper, and raises ZeroDivisionError for 0 — a bug, not a
refusal, so the call traps and the caller gets the exception and its traceback.
"""

import weft


def init(ctx):
    return {"notes": []}


def share(notes, by):
    return len(notes) // by


def handle(state, ctx, command):
    op = command.get("op") if isinstance(command, dict) else None
    if op == "note":
        return weft.Decision(events=[{"text": str(command.get("text", ""))}], reply={"ok": True})
    if op == "divide":
        return weft.Decision(reply={"share": share(state["notes"], command.get("by"))})
    raise weft.Rejected(f"unknown op {op!r}, expected note or divide")


def apply(state, ctx, event):
    return {"notes": state["notes"] + [event["text"]]}


Entity = weft.export_entity(init=init, handle=handle, apply=apply)
