"""Entities: an author's ``init``, ``handle`` and ``apply`` over plain values, and their export.

``handle(state, ctx, command)`` returns a :class:`Decision` or raises :class:`Rejected`;
``apply(state, ctx, event)`` returns the new state; ``init(ctx)`` the state of a new entity.
States, commands, events and replies are plain values (dicts, lists, str, int, …) that this
module decodes from and encodes to MessagePack. :func:`export_entity` makes the class
componentize-py exports as the ``entity`` interface.
"""

from dataclasses import dataclass, field
from typing import Any, List

from . import codec
from .context import from_wit_context, from_wit_meta
from .host import Level, log

__all__ = ["Decision", "Rejected", "init_bytes", "handle_bytes", "apply_bytes", "export_entity"]


@dataclass
class Decision:
    """The outcome of a command: events to persist, in order, and the reply to the caller.

    ``Decision(reply=x)`` answers without persisting anything (a query).
    """

    reply: Any = None
    events: List[Any] = field(default_factory=list)


class Rejected(Exception):
    """Raised by ``handle`` to refuse a command: nothing is persisted, the caller gets the message."""

    def __init__(self, message):
        super().__init__(message)
        self.message = str(message)

    def __str__(self):
        return self.message


def _decode(what, data):
    try:
        return codec.decode(data)
    except codec.CodecError as error:
        raise Rejected(f"cannot decode {what}: {error}") from None


def init_bytes(init, ctx):
    """``init`` over bytes."""
    return codec.encode(init(ctx))


def handle_bytes(handle, ctx, state, command):
    """``handle`` over bytes: returns ``(events, reply)`` as MessagePack, or raises Rejected."""
    decision = handle(_decode("state", state), ctx, _decode("command", command))
    if not isinstance(decision, Decision):
        raise TypeError(f"handle returned {type(decision).__name__}, not a weft.Decision")
    return [codec.encode(event) for event in decision.events], codec.encode(decision.reply)


def apply_bytes(apply, ctx, state, event):
    """``apply`` over bytes. Undecodable input is a bug upstream, not a user error: it raises."""
    return codec.encode(apply(codec.decode(state), ctx, codec.decode(event)))


def failed(call, error):
    """Logs an unexpected exception of a handler before it traps the call."""
    log(Level.ERROR, f"{call} failed: {type(error).__name__}: {error}")


def export_entity(*, init, handle, apply):
    """The class componentize-py exports as the ``entity`` interface: assign it to ``Entity``."""

    class Entity:
        def init(self, ctx):
            try:
                return init_bytes(init, from_wit_context(ctx))
            except Exception as error:
                failed("init", error)
                raise

        def handle_command(self, ctx, state, command):
            from componentize_py_types import Err
            from wit_world.exports.entity import Decision as WitDecision

            try:
                events, reply = handle_bytes(handle, from_wit_context(ctx), state, command)
            except Rejected as rejected:
                raise Err(rejected.message) from None
            except Exception as error:
                failed("handle", error)
                raise
            return WitDecision(events=events, reply=reply)

        def apply_event(self, ctx, state, event):
            context = from_wit_context(ctx)
            context.event = from_wit_meta(event.meta)
            try:
                return apply_bytes(apply, context, state, event.payload)
            except Exception as error:
                failed("apply", error)
                raise

    return Entity
