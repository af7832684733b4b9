"""{{name}}: a weft conflict resolver in Python.

It is consulted when an event of a replicated entity is concurrent with events already applied.
This one lets a deletion win: an incoming event concurrent with a ``{"type": "deleted"}`` event
is dropped; everything else is kept. It must be deterministic: every replica asks it at the same
point and must get the same answer.
"""

import weft


def is_deletion(envelope):
    return isinstance(envelope.event, dict) and envelope.event.get("type") == "deleted"


def resolve(state, ctx, incoming, concurrent):
    if any(is_deletion(other) for other in concurrent):
        return weft.DROP
    return weft.KEEP


Resolver = weft.export_resolver(resolve=resolve)
