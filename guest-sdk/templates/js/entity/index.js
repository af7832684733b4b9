// {{name}}: a weft entity in JavaScript.
//
// Commands (JSON over the HTTP API, MessagePack inside): {"op":"add","by":3} adds to the total,
// {"op":"get"} reads it.

import { exportEntity, Rejected } from "./weft.js";

/** The state of an entity with no events yet. */
export function init(ctx) {
  return { total: 0 };
}

/** Decides what a command does: events to persist and a reply, or a rejection. */
export function handle(state, ctx, command) {
  switch (command?.op) {
    case "add": {
      const by = command.by;
      if (!Number.isSafeInteger(by) || by <= 0) throw new Rejected("add: `by` must be a positive integer");
      return { events: [{ type: "added", by }], reply: { total: state.total + by } };
    }
    case "get":
      return { events: [], reply: { total: state.total } };
    default:
      throw new Rejected(`unknown op ${JSON.stringify(command?.op)}: expected add or get`);
  }
}

/** Folds one event into the state. Deterministic: replay and replication depend on it. */
export function apply(state, ctx, event) {
  return event.type === "added" ? { total: state.total + event.by } : state;
}

// Exported as the `resident-entity` interface: each active entity's state stays in the guest.
export const residentEntity = exportEntity({ init, handle, apply });
