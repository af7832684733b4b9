// The counter entity in JavaScript: the same commands, events, state, replies and errors as the
// Rust plugin `plugins/counter`, encoded to the same MessagePack bytes.
//
// Commands: {"op":"increment","by":3}, {"op":"decrement","by":1}, {"op":"reset"}, {"op":"get"}.
// The value never goes below the floor of 0: a decrement that would is rejected and persists
// nothing. The value is a signed 64-bit integer, as in the Rust plugin: arithmetic stays on
// Numbers while they are exact and moves to BigInt beyond 2^53.

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
  const int64 = typeof by === "bigint" ? by >= I64_MIN && by <= I64_MAX : Number.isSafeInteger(by);
  if (!int64) throw new Rejected(`cannot decode command: \`${op}\` needs \`by\`, a 64-bit integer`);
  return by;
}

/** `a + b` exactly: a Number while the sum is a safe integer, else a BigInt. */
function add(a, b) {
  if (typeof a === "number" && typeof b === "number" && Number.isSafeInteger(a + b)) return a + b;
  return BigInt(a) + BigInt(b);
}

/** `a - b` exactly. */
function subtract(a, b) {
  return add(a, -b);
}

export function handle(state, ctx, command) {
  const op = command !== null && typeof command === "object" ? command.op : undefined;
  const value = state.value;
  switch (op) {
    case "increment": {
      const by = amount(command, op);
      if (by <= 0) throw new Rejected(`increment by ${by}: must be positive`);
      const next = add(value, by);
      if (next > I64_MAX) throw new Rejected(`increment by ${by}: the value would overflow`);
      return { events: [{ type: "incremented", by }], reply: { value: next } };
    }
    case "decrement": {
      const by = amount(command, op);
      if (by <= 0) throw new Rejected(`decrement by ${by}: must be positive`);
      const next = subtract(value, by);
      if (next < FLOOR) {
        throw new Rejected(`decrement by ${by}: the value ${value} would go below the floor ${FLOOR}`);
      }
      return { events: [{ type: "decremented", by }], reply: { value: next } };
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
      return { value: add(state.value, event.by) };
    case "decremented":
      return { value: subtract(state.value, event.by) };
    case "reset":
      return { value: FLOOR };
    default:
      throw new Error(`unknown event type ${JSON.stringify(event.type)}`);
  }
}

export const residentEntity = exportEntity({ init, handle, apply });
