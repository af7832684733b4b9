"""A resolver for auctions, in Python: the same decisions as the Rust plugin
``plugins/highest-bid``.

When bids are concurrent, the highest wins. It reads only the ``amount`` field of each event, so
it serves any entity whose bid events carry one, in any language. An incoming bid is kept when
it beats every concurrent bid (ties go to the lower origin replica id, so every replica decides
the same); otherwise it is dropped. Events without an amount are not bids and are always kept.
"""

import weft

U64_MAX = (1 << 64) - 1


def bid(envelope):
    """The amount of a bid event, or None for an event that is not a bid."""
    event = envelope.event
    if not isinstance(event, dict):
        raise ValueError("an event is not a map")
    amount = event.get("amount")
    if amount is None:
        return None
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= U64_MAX:
        raise ValueError(f"`amount` must be an unsigned 64-bit integer, not {amount!r}")
    return amount


def beats(other_amount, other, amount, incoming):
    """True when bid ``other`` ranks above ``incoming``: a higher amount, or the same amount from
    a lower origin replica id. (Python orders strings by code point, Rust by UTF-8 bytes: the
    same order.)"""
    if other_amount != amount:
        return other_amount > amount
    return other.meta.origin_replica < incoming.meta.origin_replica


def resolve(state, ctx, incoming, concurrent):
    amount = bid(incoming)
    if amount is None:
        return weft.KEEP
    for other in concurrent:
        other_amount = bid(other)
        if other_amount is not None and beats(other_amount, other, amount, incoming):
            return weft.DROP
    return weft.KEEP


Resolver = weft.export_resolver(resolve=resolve)
