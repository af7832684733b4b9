// The counter entity in JavaScript: the same commands, events, state, replies and errors as the
// Rust plugin `plugins/counter`, encoded to the same MessagePack bytes.
//
// Commands: {"op":"increment","by":3}, {"op":"decrement","by":1}, {"op":"reset"}, {"op":"get"}.
// The value never goes below the floor of 0: a decrement that would is rejected and persists
// nothing. The value is a signed 64-bit integer, as in the Rust plugin: arithmetic is done on
// BigInt, so values beyond 2^53 stay exact.

import { exportEntity, Rejected } from "../../guest-sdk/js/weft.js";

/** The lowest value a counter may hold. */
export const FLOOR = 0;

export const I64_MIN = -(2n ** 63n);
export const I64_MAX = 2n ** 63n - 1n;

export function init() {
  return { value: FLOOR };
}

/** The `by` of an increment or decrement; a command without one does not decode. */
function amount(command, op) {
  const by = command.by;
  const integer = typeof by === "bigint" || Number.isSafeInteger(by);
  if (!integer || BigInt(by) < I64_MIN || BigInt(by) > I64_MAX) {
    throw new Rejected(`cannot decode command: \`${op}\` needs \`by\`, a 64-bit integer`);
  }
  return by;
}

export function handle(state, ctx, command) {
  const op = command !== null && typeof command === "object" ? command.op : undefined;
  const value = BigInt(state.value);
  switch (op) {
    case "increment": {
      const by = amount(command, op);
      if (by <= 0) throw new Rejected(`increment by ${by}: must be positive`);
      if (value + BigInt(by) > I64_MAX) throw new Rejected(`increment by ${by}: the value would overflow`);
      return { events: [{ type: "incremented", by }], reply: { value: value + BigInt(by) } };
    }
    case "decrement": {
      const by = amount(command, op);
      if (by <= 0) throw new Rejected(`decrement by ${by}: must be positive`);
      if (value - BigInt(by) < FLOOR) {
        throw new Rejected(`decrement by ${by}: the value ${value} would go below the floor ${FLOOR}`);
      }
      return { events: [{ type: "decremented", by }], reply: { value: value - BigInt(by) } };
    }
    case "reset":
      return { events: [{ type: "reset" }], reply: { value: FLOOR } };
    case "get":
      return { events: [], reply: { value: state.value } };
    default:
      throw new Rejected(
        `cannot decode command: unknown op ${JSON.stringify(op) ?? "undefined"}, expected increment, decrement, reset or get`,
      );
  }
}

export function apply(state, ctx, event) {
  switch (event.type) {
    case "incremented":
      return { value: BigInt(state.value) + BigInt(event.by) };
    case "decremented":
      return { value: BigInt(state.value) - BigInt(event.by) };
    case "reset":
      return { value: FLOOR };
    default:
      throw new Error(`unknown event type ${JSON.stringify(event.type)}`);
  }
}

export const entity = exportEntity({ init, handle, apply });
