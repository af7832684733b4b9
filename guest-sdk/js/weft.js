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
//   export const residentEntity = exportEntity({ init, handle, apply });
//
// Built for the world `resident-entity-plugin`, each active entity is a `Resident`: its state is
// decoded once and stays in the guest between calls, which carry a batch of commands or a run of
// events. The same object exported as `entity` serves the byte-passing contract
// (`entity-plugin`). An optional `onLeaseLost(state, ctx, lost)` returns a value to publish when
// a single-writer entity loses its lease (`lost` is `{ fencingToken, reason }`), or null.
//
// A resolver exports `resolver = exportResolver({ resolve })`, where `resolve(state, ctx,
// incoming, concurrent)` returns `keep`, `drop` or `replace(events)`.
//
// Contexts are `{ entityType, entityId, replica, allReplicas, now, recoveryRunning, role, event }`
// (`event`, the applied event's metadata, in `apply` only, where `now` is that event's
// timestamp); an envelope is `{ meta, event }`.
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

/** A decision `{ events, reply }` as MessagePack. */
function encodeDecision(decision) {
  if (decision === null || typeof decision !== "object" || !("reply" in decision)) {
    throw new TypeError("handle must return { events, reply }");
  }
  return { events: (decision.events ?? []).map(encode), reply: encode(decision.reply) };
}

/** `handle` over bytes: returns `{ events, reply }` as MessagePack, or throws Rejected. */
export function handleBytes(handle, ctx, state, command) {
  return encodeDecision(handle(decodeOrReject("state", state), ctx, decodeOrReject("command", command)));
}

/**
 * The metadata of a batch's `index`-th event (from 0), given its first event's: `seqNr` and
 * `originSeqNr` advance by `index`, and so does the version vector's entry of `replica` if it
 * has one; every other field is the first event's (the rule of `resident-entity.handle` in the
 * WIT, by which the host records the events).
 */
export function nthEventMeta(first, index, replica) {
  if (index === 0) return first;
  const meta = { ...first, seqNr: first.seqNr + index, originSeqNr: first.originSeqNr + index };
  if (Object.hasOwn(first.version, replica)) {
    meta.version = { ...first.version, [replica]: first.version[replica] + index };
  }
  return meta;
}

/**
 * One active entity's decoded state, kept between calls, and the calls that move it. Works on
 * the SDK's own shapes (contexts, metadata with `version` as an object, encoded payloads), so it
 * runs natively under `node --test`; the exported resource converts the bindings' records.
 *
 * `handle` must not change the state it is given: the state is no longer decoded afresh for
 * every command, so a change made before a rejection would stay.
 */
export class Resident {
  /** A new entity (`snapshot` null) or one restored from `snapshot()`'s bytes. */
  constructor(plugin, ctx, snapshot) {
    this.plugin = plugin;
    this.state = snapshot == null ? plugin.init(ctx) : decode(snapshot);
  }

  /**
   * Runs a batch of encoded commands in order, folding each decision's events before the next
   * command runs. Returns one outcome per command: `{ events, reply }` as MessagePack, or the
   * `Rejected` that refused it, which changed nothing — a command that does not decode and a bug
   * in `handle` (logged) are refused too. `firstEvent` is the metadata of the batch's first
   * event; the others follow by `nthEventMeta`.
   */
  handle(ctx, firstEvent, commands) {
    const outcomes = [];
    let folded = 0;
    for (const command of commands) {
      let decided;
      try {
        decided = encodeDecision(this.plugin.handle(this.state, ctx, decodeOrReject("command", command)));
      } catch (error) {
        outcomes.push(
          error instanceof Rejected ? error : new Rejected(`handle failed: ${describeException(failed("handle", error))}`),
        );
        continue;
      }
      for (const payload of decided.events) {
        this.fold(ctx, nthEventMeta(firstEvent, folded, ctx.replica), payload);
        folded += 1;
      }
      outcomes.push(decided);
    }
    return outcomes;
  }

  /** Folds events in order: each `{ meta, payload }`. */
  apply(ctx, envelopes) {
    for (const { meta, payload } of envelopes) this.fold(ctx, meta, payload);
  }

  /** The state as MessagePack. */
  snapshot() {
    return encode(this.state);
  }

  /** The author's notice for a lost lease, encoded, or null. */
  onLeaseLost(ctx, lost) {
    const notice = this.plugin.onLeaseLost?.(this.state, ctx, lost) ?? null;
    return notice === null ? null : encode(notice);
  }

  // The author's apply sees the event as the journal holds it (decoded from its bytes, as on
  // replay) with a context whose clock is the event's own time.
  fold(ctx, meta, payload) {
    this.state = this.plugin.apply(this.state, { ...ctx, now: meta.timestamp, event: meta }, decode(payload));
  }
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

/** The most of an exception's description (message and stack) a refusal carries, in bytes. */
export const EXCEPTION_TEXT_BYTES_MAX = 4096;

/** What ends a description cut to `EXCEPTION_TEXT_BYTES_MAX`. */
const CUT_MARKER = "… [cut]";

/**
 * An exception's message and stack, as the caller reads them in a refusal: cut to
 * `EXCEPTION_TEXT_BYTES_MAX` bytes of UTF-8, with a marker.
 */
export function describeException(error) {
  const message = String(error);
  const stack = typeof error?.stack === "string" ? error.stack.trimEnd() : "";
  // V8 starts the stack with the message; QuickJS gives the frames alone.
  const text = stack === "" ? message : stack.startsWith(message) ? stack : `${message}\n${stack}`;
  // Counted by hand: componentize-qjs's QuickJS has no TextEncoder.
  const room = EXCEPTION_TEXT_BYTES_MAX - utf8Length(CUT_MARKER);
  let bytes = 0;
  let end = 0;
  for (const char of text) {
    bytes += utf8Length(char);
    if (bytes > EXCEPTION_TEXT_BYTES_MAX) return text.slice(0, end) + CUT_MARKER;
    if (bytes <= room) end += char.length;
  }
  return text;
}

/** Bytes of `text` in UTF-8 (a lone surrogate as the 3 of U+FFFD). */
function utf8Length(text) {
  let bytes = 0;
  for (const char of text) {
    const point = char.codePointAt(0);
    bytes += point < 0x80 ? 1 : point < 0x800 ? 2 : point < 0x10000 ? 3 : 4;
  }
  return bytes;
}

/** Logs an unexpected exception of a handler, with its stack, then throws it on to fail the call. */
function failed(call, error) {
  log("error", `${call} failed: ${describeException(error)}`);
  return error;
}

/** Runs `call()`; an exception is logged, then thrown on to fail the call. */
function logged(name, call) {
  try {
    return call();
  } catch (error) {
    throw failed(name, error);
  }
}

/** The class componentize-qjs exports as the `resident-entity` interface's `entity` resource. */
function residentClass(plugin) {
  return class Entity {
    constructor(ctx, snapshot) {
      const call = snapshot == null ? "init" : "restore";
      this.resident = logged(call, () => new Resident(plugin, contextFromWit(ctx), snapshot));
    }

    handle(ctx, firstEvent, commands) {
      const outcomes = logged("handle", () =>
        this.resident.handle(contextFromWit(ctx), metaFromWit(firstEvent), commands),
      );
      return outcomes.map((outcome) =>
        outcome instanceof Rejected ? { tag: "err", val: outcome.message } : { tag: "ok", val: outcome },
      );
    }

    apply(ctx, events) {
      const envelopes = events.map(({ meta, payload }) => ({ meta: metaFromWit(meta), payload }));
      logged("apply", () => this.resident.apply(contextFromWit(ctx), envelopes));
    }

    snapshot() {
      return logged("snapshot", () => this.resident.snapshot());
    }

    onLeaseLost(ctx, loss) {
      const lost = { fencingToken: loss.fencingToken, reason: loss.reason };
      return logged("onLeaseLost", () => this.resident.onLeaseLost(contextFromWit(ctx), lost));
    }
  };
}

/**
 * The object to export for either entity contract: as `residentEntity` for the world
 * `resident-entity-plugin` (its `Entity` is the resource), as `entity` for `entity-plugin`.
 */
export function exportEntity({ init, handle, apply, onLeaseLost }) {
  return {
    Entity: residentClass({ init, handle, apply, onLeaseLost }),
    init(ctx) {
      return logged("init", () => encode(init(contextFromWit(ctx))));
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
        throw `handle failed: ${describeException(failed("handle", error))}`;
      }
      return decision;
    },
    applyEvent(ctx, state, event) {
      const context = contextFromWit(ctx, metaFromWit(event.meta));
      return logged("apply", () => applyBytes(apply, context, state, event.payload));
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
