"""Resolvers: an author's ``resolve`` over plain values, and its export.

``resolve(state, ctx, incoming, concurrent)`` gets the entity's state, the incoming
:class:`~weft.context.Envelope` and the concurrent ones already applied, and returns
:data:`KEEP`, :data:`DROP` or :class:`Replace`. It must be deterministic: every replica calls it
at the same point of the same total order and must reach the same answer.
"""

from dataclasses import dataclass, field
from typing import Any, List

from . import codec
from .context import Envelope, from_wit_context, from_wit_meta
from .entity import failed

__all__ = ["Keep", "Drop", "Replace", "KEEP", "DROP", "resolve_bytes", "export_resolver"]


@dataclass(frozen=True)
class Keep:
    """Apply the incoming event as it is."""


@dataclass(frozen=True)
class Drop:
    """Skip the incoming event."""


@dataclass
class Replace:
    """Apply these events instead of the incoming one."""

    events: List[Any] = field(default_factory=list)


KEEP = Keep()
DROP = Drop()


def resolve_bytes(resolve, ctx, state, incoming, concurrent):
    """``resolve`` over bytes: ``incoming`` and ``concurrent`` are ``(EventMeta, payload)``.

    Returns :data:`KEEP`, :data:`DROP`, or :class:`Replace` holding encoded events.
    """

    def open_envelope(meta_and_payload):
        meta, payload = meta_and_payload
        return Envelope(meta=meta, event=codec.decode(payload))

    resolution = resolve(
        codec.decode(state),
        ctx,
        open_envelope(incoming),
        [open_envelope(other) for other in concurrent],
    )
    if isinstance(resolution, Replace):
        return Replace([codec.encode(event) for event in resolution.events])
    if isinstance(resolution, (Keep, Drop)):
        return resolution
    raise TypeError(f"resolve returned {type(resolution).__name__}, not KEEP, DROP or Replace")


def export_resolver(*, resolve):
    """The class componentize-py exports as the ``resolver`` interface: assign it to ``Resolver``."""

    class Resolver:
        def resolve(self, ctx, state, incoming, concurrent):
            from wit_world.exports import resolver as wit

            def split(envelope):
                return from_wit_meta(envelope.meta), envelope.payload

            try:
                resolution = resolve_bytes(
                    resolve,
                    from_wit_context(ctx),
                    state,
                    split(incoming),
                    [split(other) for other in concurrent],
                )
            except Exception as error:
                failed("resolve", error)
                raise
            if isinstance(resolution, Replace):
                return wit.Resolution_Replace(resolution.events)
            if isinstance(resolution, Drop):
                return wit.Resolution_Drop()
            return wit.Resolution_Keep()

    return Resolver
