"""What a handler knows about where and when it runs, and the metadata of the events it sees.

Plain dataclasses mirroring the WIT ``types`` interface, so handlers and their unit tests never
touch generated bindings. ``from_wit_*`` convert the bindings' objects (read by attribute name,
so this module imports nothing generated and works natively too).
"""

import enum
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["Role", "EventMeta", "Envelope", "Context", "LeaseLost"]


class Role(enum.Enum):
    """Whether this replica may persist events for the entity."""

    WRITER = "writer"
    OBSERVER = "observer"


@dataclass
class EventMeta:
    """What the journal recorded about an event, besides its payload."""

    persistence_id: str = ""
    seq_nr: int = 0
    # ULID of the host boot that wrote the event.
    writer: str = ""
    fencing_token: int = 0
    # Hybrid logical clock timestamp (physical milliseconds << 16 | logical counter).
    timestamp: int = 0
    origin_replica: str = ""
    origin_seq_nr: int = 0
    # Version vector: replica -> counter.
    version: Dict[str, int] = field(default_factory=dict)
    concurrent: bool = False


@dataclass
class Envelope:
    """An event (decoded payload) with its metadata."""

    meta: EventMeta
    event: Any


@dataclass
class LeaseLost:
    """Why a single-writer entity stopped being the writer on this host (``on_lease_lost``)."""

    # The fencing token of the tenure that ended.
    fencing_token: int = 0
    # ``expired``, ``taken-over`` or ``fenced``.
    reason: str = ""


@dataclass
class Context:
    """The context of one call."""

    entity_type: str = ""
    entity_id: str = ""
    # The replica (node) running the call.
    replica: str = ""
    # Every replica of the entity type.
    all_replicas: List[str] = field(default_factory=list)
    # The only clock a guest reads: HLC timestamp of the call, the same on replay.
    now: int = 0
    # True while the entity is being recovered from its journal.
    recovery_running: bool = False
    role: Role = Role.WRITER
    # Metadata of the event being applied (set in ``apply`` only).
    event: Optional[EventMeta] = None

    @staticmethod
    def for_test(entity_type, entity_id):
        """A context for unit tests: a writer on a single replica ``"local"``."""
        return Context(
            entity_type=entity_type,
            entity_id=entity_id,
            replica="local",
            all_replicas=["local"],
        )


def from_wit_meta(meta):
    return EventMeta(
        persistence_id=meta.persistence_id,
        seq_nr=meta.seq_nr,
        writer=meta.writer,
        fencing_token=meta.fencing_token,
        timestamp=meta.timestamp,
        origin_replica=meta.origin_replica,
        origin_seq_nr=meta.origin_seq_nr,
        version={entry.replica: entry.counter for entry in meta.version},
        concurrent=meta.concurrent,
    )


def from_wit_context(ctx):
    # The generated enum's member names are the WIT case names in upper case.
    return Context(
        entity_type=ctx.entity_type,
        entity_id=ctx.entity_id,
        replica=ctx.replica,
        all_replicas=list(ctx.all_replicas),
        now=ctx.now,
        recovery_running=ctx.recovery_running,
        role=Role[ctx.role.name],
    )


def from_wit_lease_loss(loss):
    return LeaseLost(fencing_token=loss.fencing_token, reason=loss.reason)
