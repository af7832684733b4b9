// weft: write weft plugins in JavaScript.
//
// An author writes plain functions over plain values — objects, arrays, strings, numbers — and
// exports them with one line; this module does the MessagePack (the same bytes as the Rust SDK,
// see ./msgpack.js) and the WIT plumbing. The same functions run natively under `node --test`:
//
//   import { exportEntity, Rejected } from "./weft.js";
//   export function init(ctx) { return { value: 0 }; }
//   export function handle(state, ctx, command) {
//     if (!(command.by > 0)) throw new Rejected("`by` must be a positive integer");
//     return { events: [{ type: "incremented", by: command.by }], reply: { value: state.value + command.by } };
//   }
//   export function apply(state, ctx, event) { return { value: state.value + event.by }; }
//   export const entity = exportEntity({ init, handle, apply });
//
// A resolver exports `resolver = exportResolver({ resolve })`, where `resolve(state, ctx,
// incoming, concurrent)` returns `keep`, `drop` or `replace(events)`.
//
// Contexts are `{ entityType, entityId, replica, allReplicas, now, recoveryRunning, role, event }`
// (`event`, the applied event's metadata, in `apply` only); an envelope is `{ meta, event }`.
// componentize-qjs hands 64-bit WIT integers (`now`, timestamps, sequence numbers, version
// counters) to JavaScript as Numbers: exact up to 2^53, rounded beyond.

import { decode, encode, CodecError } from "./msgpack.js";

export { decode, encode, CodecError, Ext } from "./msgpack.js";

/** Thrown by `handle` to refuse a command: nothing is persisted, the caller gets the message. */
export class Rejected extends Error {
  constructor(message) {
    super(message);
    this.name = "Rejected";
  }
}

/** Resolutions: apply the incoming event, skip it, or apply these events instead. */
export const keep = Object.freeze({ tag: "keep" });
export const drop = Object.freeze({ tag: "drop" });
export function replace(events) {
  return { tag: "replace", events };
}

/**
 * Orders strings by code point, as Rust and Python do (JavaScript's `<` compares UTF-16 code
 * units, which sorts characters beyond U+FFFF differently): what a resolver needs so every
 * replica, in any language, decides the same.
 */
export function compareText(a, b) {
  const left = [...a];
  const right = [...b];
  for (let i = 0; i < Math.min(left.length, right.length); i++) {
    const difference = left[i].codePointAt(0) - right[i].codePointAt(0);
    if (difference !== 0) return difference;
  }
  return left.length - right.length;
}

// Inside a component the WIT `host` import exists; natively (under Node) the import fails and
// log lines go to stderr.
let hostLog = (level, message) => console.error(`[${level}] ${message}`);
try {
  const host = await import("weft:plugin/host@0.1.0");
  hostLog = (host.default ?? host).log;
} catch {
  // Not inside a component.
}

/** Writes a line to the host's log: level is "trace", "debug", "info", "warn" or "error". */
export function log(level, message) {
  hostLog(level, String(message));
}

/** A context for unit tests: a writer on a single replica "local". */
export function testContext(entityType, entityId) {
  return {
    entityType,
    entityId,
    replica: "local",
    allReplicas: ["local"],
    now: 0,
    recoveryRunning: false,
    role: "writer",
    event: null,
  };
}

function decodeOrReject(what, bytes) {
  try {
    return decode(bytes);
  } catch (error) {
    if (error instanceof CodecError) throw new Rejected(`cannot decode ${what}: ${error.message}`);
    throw error;
  }
}

/** `handle` over bytes: returns `{ events, reply }` as MessagePack, or throws Rejected. */
export function handleBytes(handle, ctx, state, command) {
  const decision = handle(decodeOrReject("state", state), ctx, decodeOrReject("command", command));
  if (decision === null || typeof decision !== "object" || !("reply" in decision)) {
    throw new TypeError("handle must return { events, reply }");
  }
  return { events: (decision.events ?? []).map(encode), reply: encode(decision.reply) };
}

/** `apply` over bytes. */
export function applyBytes(apply, ctx, state, event) {
  return encode(apply(decode(state), ctx, decode(event)));
}

/** `resolve` over bytes: `incoming` and `concurrent` are `{ meta, payload }`. */
export function resolveBytes(resolve, ctx, state, incoming, concurrent) {
  const open = ({ meta, payload }) => ({ meta, event: decode(payload) });
  const resolution = resolve(decode(state), ctx, open(incoming), concurrent.map(open));
  switch (resolution?.tag) {
    case "keep":
    case "drop":
      return resolution;
    case "replace":
      return replace(resolution.events.map(encode));
    default:
      throw new TypeError("resolve must return keep, drop or replace(events)");
  }
}

function contextFromWit(ctx, event = null) {
  return { ...ctx, allReplicas: [...ctx.allReplicas], event };
}

function metaFromWit(meta) {
  const version = {};
  for (const { replica, counter } of meta.version) version[replica] = counter;
  return { ...meta, version };
}

/** Logs an unexpected exception of a handler, then throws it on to fail the call. */
function failed(call, error) {
  log("error", `${call} failed: ${error}${error?.stack ? `\n${error.stack}` : ""}`);
  return error;
}

/** The object to export as the `entity` interface: `export const entity = exportEntity({…})`. */
export function exportEntity({ init, handle, apply }) {
  return {
    init(ctx) {
      try {
        return encode(init(contextFromWit(ctx)));
      } catch (error) {
        throw failed("init", error);
      }
    },
    handleCommand(ctx, state, command) {
      let decision;
      try {
        decision = handleBytes(handle, contextFromWit(ctx), state, command);
      } catch (error) {
        // A thrown string is the WIT `err`: the caller gets the message. componentize-qjs
        // turns any exception of a function returning `result` into an `err`, so a bug in
        // `handle` fails the command with its message too, after a line in the host's log.
        if (error instanceof Rejected) throw error.message;
        throw `handle failed: ${failed("handle", error)}`;
      }
      return decision;
    },
    applyEvent(ctx, state, event) {
      try {
        return applyBytes(apply, contextFromWit(ctx, metaFromWit(event.meta)), state, event.payload);
      } catch (error) {
        throw failed("apply", error);
      }
    },
  };
}

/** The object to export as the `resolver` interface: `export const resolver = exportResolver({…})`. */
export function exportResolver({ resolve }) {
  return {
    resolve(ctx, state, incoming, concurrent) {
      const split = (envelope) => ({ meta: metaFromWit(envelope.meta), payload: envelope.payload });
      let resolution;
      try {
        resolution = resolveBytes(resolve, contextFromWit(ctx), state, split(incoming), concurrent.map(split));
      } catch (error) {
        throw failed("resolve", error);
      }
      return resolution.tag === "replace" ? { tag: "replace", val: resolution.events } : { tag: resolution.tag };
    },
  };
}
