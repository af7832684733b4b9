"""weft: write weft plugins in Python.

An author writes plain functions over plain values — dicts, lists, strings, numbers — and exports
them with one line; the SDK does the MessagePack (the same bytes as the Rust SDK) and the WIT
plumbing. The same functions run natively under ``python3 -m unittest``, with no wasm involved::

    import weft

    def init(ctx):
        return {"value": 0}

    def handle(state, ctx, command):
        by = command.get("by")
        if not isinstance(by, int) or by <= 0:
            raise weft.Rejected("`by` must be a positive integer")
        return weft.Decision(events=[{"type": "incremented", "by": by}],
                             reply={"value": state["value"] + by})

    def apply(state, ctx, event):
        return {"value": state["value"] + event["by"]}

    Entity = weft.export_entity(init=init, handle=handle, apply=apply)

Build it with ``componentize-py -d wit -w resident-entity-plugin componentize app -o app.wasm
--stub-wasi``, with this package on the Python path (``-p``): each active entity's state then
stays decoded in the guest between calls (``-w entity-plugin`` builds the same app for the
byte-passing contract). A resolver is ``Resolver = weft.export_resolver(resolve=…)``, built with
``-w resolver-plugin``.

Layout: ``codec`` (MessagePack), ``context`` (Context, EventMeta, Envelope, LeaseLost),
``entity`` (Decision, Rejected, Plugin, Resident, export_entity), ``resolver`` (KEEP, DROP,
Replace, export_resolver), ``host`` (log).
"""

from .codec import CodecError, decode, encode
from .context import Context, Envelope, EventMeta, LeaseLost, Role
from .entity import Decision, Plugin, Rejected, Resident, export_entity
from .host import Level, log
from .resolver import DROP, KEEP, Drop, Keep, Replace, export_resolver

__all__ = [
    "CodecError",
    "decode",
    "encode",
    "Context",
    "Envelope",
    "EventMeta",
    "LeaseLost",
    "Role",
    "Decision",
    "Plugin",
    "Rejected",
    "Resident",
    "export_entity",
    "Level",
    "log",
    "DROP",
    "KEEP",
    "Drop",
    "Keep",
    "Replace",
    "export_resolver",
]
