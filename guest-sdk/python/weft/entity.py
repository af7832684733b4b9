"""Entities: an author's ``init``, ``handle``, ``apply`` and ``on_lease_lost`` over plain values,
and their export.

``handle(state, ctx, command)`` returns a :class:`Decision` or raises :class:`Rejected`;
``apply(state, ctx, event)`` returns the new state; ``init(ctx)`` the state of a new entity;
``on_lease_lost(state, ctx, lost)`` (optional) a value to publish when a single-writer entity
loses its lease, or None. States, commands, events and replies are plain values (dicts, lists,
str, int, …) that this module decodes from and encodes to MessagePack.

:func:`export_entity` exports them for either entity contract of the WIT:

- ``resident-entity`` (world ``resident-entity-plugin``): each active entity is a
  :class:`Resident`, its state decoded once and kept in the guest between calls; a call carries a
  batch of commands or a run of events. componentize-py takes the resource class from a module
  named ``resident_entity``, which :func:`export_entity` provides.
- ``entity`` (world ``entity-plugin``): the class it returns, assigned to ``Entity``; every call
  passes the state in and out as bytes.
"""

import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, List, NamedTuple, Optional

from . import codec
from .context import from_wit_context, from_wit_lease_loss, from_wit_meta
from .host import Level, log

__all__ = [
    "Decision",
    "Rejected",
    "Plugin",
    "Resident",
    "nth_event_meta",
    "init_bytes",
    "handle_bytes",
    "apply_bytes",
    "export_entity",
]


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


def _says_nothing(state, ctx, lost):
    return None


class Plugin(NamedTuple):
    """An author's entity functions."""

    init: Callable
    handle: Callable
    apply: Callable
    on_lease_lost: Callable = _says_nothing


def _shallow_copy(record):
    """A copy of a plain dataclass instance, several times quicker than ``copy.copy``."""
    clone = object.__new__(type(record))
    clone.__dict__.update(record.__dict__)
    return clone


def nth_event_meta(first, index, replica):
    """The metadata of a batch's ``index``-th event (from 0), given its first event's.

    ``seq_nr`` and ``origin_seq_nr`` advance by ``index``, and so does the version vector's entry
    of ``replica`` if it has one; every other field is the first event's (the rule of
    ``resident-entity.handle`` in the WIT, by which the host records the events).
    """
    if index == 0:
        return first
    meta = _shallow_copy(first)
    meta.seq_nr += index
    meta.origin_seq_nr += index
    if replica in first.version:
        meta.version = dict(first.version)
        meta.version[replica] += index
    return meta


class Resident:
    """One active entity's decoded state, kept between calls, and the calls that move it.

    Works on the SDK's own types (:class:`~weft.context.Context`, :class:`~weft.context.EventMeta`,
    encoded payloads), so it runs natively in unit tests; the exported resource converts the
    generated bindings' records around it.

    ``handle`` must not change the state it is given: the state is no longer decoded afresh for
    every command, so a change made before a rejection would stay.
    """

    __slots__ = ("plugin", "state")

    def __init__(self, plugin, ctx, snapshot):
        """A new entity (``snapshot`` is None) or one restored from :meth:`snapshot`'s bytes."""
        self.plugin = plugin
        self.state = plugin.init(ctx) if snapshot is None else codec.decode(snapshot)

    def handle(self, ctx, first_event, commands):
        """Runs a batch of encoded commands in order, folding each decision's events before the
        next command runs.

        Returns one outcome per command: ``(events, reply)`` as MessagePack, or the
        :class:`Rejected` that refused it (a command that does not decode is refused too), which
        changed nothing. ``first_event`` is the metadata of the batch's first event; the others
        follow by :func:`nth_event_meta`. Any other exception of a handler is a bug: it escapes,
        and the call fails.
        """
        outcomes = []
        folded = 0
        for command in commands:
            try:
                decision = self.plugin.handle(self.state, ctx, _decode("command", command))
            except Rejected as rejected:
                outcomes.append(rejected)
                continue
            events, reply = _encode_decision(decision)
            for payload in events:
                self._fold(ctx, nth_event_meta(first_event, folded, ctx.replica), payload)
                folded += 1
            outcomes.append((events, reply))
        return outcomes

    def apply(self, ctx, envelopes):
        """Folds events in order: each ``(EventMeta, payload)``."""
        for meta, payload in envelopes:
            self._fold(ctx, meta, payload)

    def snapshot(self):
        """The state as MessagePack."""
        return codec.encode(self.state)

    def on_lease_lost(self, ctx, lost):
        """The author's notice for a lost lease, encoded, or None."""
        notice = self.plugin.on_lease_lost(self.state, ctx, lost)
        return None if notice is None else codec.encode(notice)

    def _fold(self, ctx, meta, payload):
        # The author's apply sees the event as the journal holds it (decoded from its bytes, as
        # on replay) with a context whose clock is the event's own time.
        event_ctx = _shallow_copy(ctx)
        event_ctx.now = meta.timestamp
        event_ctx.event = meta
        self.state = self.plugin.apply(self.state, event_ctx, codec.decode(payload))


def _encode_decision(decision):
    if not isinstance(decision, Decision):
        raise TypeError(f"handle returned {type(decision).__name__}, not a weft.Decision")
    return [codec.encode(event) for event in decision.events], codec.encode(decision.reply)


def init_bytes(init, ctx):
    """``init`` over bytes."""
    return codec.encode(init(ctx))


def handle_bytes(handle, ctx, state, command):
    """``handle`` over bytes: returns ``(events, reply)`` as MessagePack, or raises Rejected."""
    return _encode_decision(handle(_decode("state", state), ctx, _decode("command", command)))


def apply_bytes(apply, ctx, state, event):
    """``apply`` over bytes. Undecodable input is a bug upstream, not a user error: it raises."""
    return codec.encode(apply(codec.decode(state), ctx, codec.decode(event)))


def _traceback(error):
    """The frames an exception went through, as Python prints them, without the source lines:
    reading them would need the files, which a guest cannot open."""
    lines = ["Traceback (most recent call last):"]
    frame = error.__traceback__
    while frame is not None:
        code = frame.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.tb_lineno}, in {code.co_name}')
        frame = frame.tb_next
    lines.append(f"{type(error).__name__}: {error}")
    return "\n".join(lines)


def failed(call, error):
    """Logs an unexpected exception of a handler, with its traceback, before it traps the call.

    The WIT's ``err`` means a refusal, so a bug cannot travel in it: the host attaches this line,
    the call's last at error level, to the trap's error, and the caller reads it there.
    """
    log(Level.ERROR, f"{call} failed: {type(error).__name__}: {error}\n{_traceback(error)}")


def _logged(call, function, *args):
    """``function(*args)``; an exception is logged, then traps the call."""
    try:
        return function(*args)
    except Exception as error:
        failed(call, error)
        raise


def _resource_class(plugin):
    """The class componentize-py exports as the ``resident-entity`` interface's ``entity``."""

    class Entity:
        def __init__(self, ctx, snapshot):
            call = "init" if snapshot is None else "restore"
            self.resident = _logged(call, Resident, plugin, from_wit_context(ctx), snapshot)

        def handle(self, ctx, first_event, commands):
            from componentize_py_types import Err, Ok
            from wit_world.exports.resident_entity import Decision as WitDecision

            outcomes = _logged(
                "handle",
                self.resident.handle,
                from_wit_context(ctx),
                from_wit_meta(first_event),
                commands,
            )
            return [
                Err(outcome.message)
                if isinstance(outcome, Rejected)
                else Ok(WitDecision(events=outcome[0], reply=outcome[1]))
                for outcome in outcomes
            ]

        def apply(self, ctx, events):
            envelopes = [(from_wit_meta(event.meta), event.payload) for event in events]
            _logged("apply", self.resident.apply, from_wit_context(ctx), envelopes)

        def snapshot(self):
            return _logged("snapshot", self.resident.snapshot)

        def on_lease_lost(self, ctx, loss):
            return _logged(
                "on_lease_lost",
                self.resident.on_lease_lost,
                from_wit_context(ctx),
                from_wit_lease_loss(loss),
            )

    return Entity


def _byte_entity_class(plugin):
    """The class componentize-py exports as the ``entity`` interface."""

    class Entity:
        def init(self, ctx):
            return _logged("init", init_bytes, plugin.init, from_wit_context(ctx))

        def handle_command(self, ctx, state, command):
            from componentize_py_types import Err
            from wit_world.exports.entity import Decision as WitDecision

            try:
                events, reply = handle_bytes(plugin.handle, from_wit_context(ctx), state, command)
            except Rejected as rejected:
                raise Err(rejected.message) from None
            except Exception as error:
                failed("handle", error)
                raise
            return WitDecision(events=events, reply=reply)

        def apply_event(self, ctx, state, event):
            context = from_wit_context(ctx)
            context.event = from_wit_meta(event.meta)
            return _logged("apply", apply_bytes, plugin.apply, context, state, event.payload)

    return Entity


def export_entity(*, init, handle, apply, on_lease_lost: Optional[Callable] = None):
    """Exports an entity for both contracts: assign the result to ``Entity``.

    Returns the class of the ``entity`` interface, and publishes the ``resident-entity``
    resource as module ``resident_entity``, where componentize-py looks for it once it has
    imported the app. Building for a world picks the one it exports.
    """
    plugin = Plugin(init, handle, apply, on_lease_lost or _says_nothing)
    module = types.ModuleType("resident_entity", "The resident-entity resource weft exports.")
    module.Entity = _resource_class(plugin)
    sys.modules["resident_entity"] = module
    return _byte_entity_class(plugin)
