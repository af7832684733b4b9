// The SDK's WIT plumbing, called the way the component calls it, natively: `node --test guest-sdk/js/`.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  compareText, decode, describeException, drop, encode, EXCEPTION_TEXT_BYTES_MAX, exportEntity, exportResolver, keep, nthEventMeta, Rejected, replace, Resident, testContext,
} from "./weft.js";

// What the bindings pass in: records with camelCase fields, `role` as its case name.
const witContext = { ...testContext("t", "i"), event: undefined };
const witMeta = {
  persistenceId: "t|i", seqNr: 1, writer: "w", fencingToken: 0, timestamp: 7, originReplica: "a",
  originSeqNr: 1, version: [{ replica: "a", counter: 1 }, { replica: "b", counter: 2 }], concurrent: false,
};

const entity = exportEntity({
  init: () => ({ n: 0 }),
  handle(state, ctx, command) {
    if (command.op === "refuse") throw new Rejected("no thanks");
    if (command.op === "bug") return null.field;
    return { events: [{ added: command.by }], reply: state.n + command.by };
  },
  apply: (state, ctx, event) => ({ n: state.n + event.added, seen: ctx.event.version }),
});

test("an entity's calls go through MessagePack", () => {
  const state = entity.init(witContext);
  assert.deepEqual(decode(state), { n: 0 });
  const decision = entity.handleCommand(witContext, state, encode({ op: "add", by: 2 }));
  assert.deepEqual(decision.events.map(decode), [{ added: 2 }]);
  assert.equal(decode(decision.reply), 2);
  const next = entity.applyEvent(witContext, state, { meta: witMeta, payload: decision.events[0] });
  assert.deepEqual(decode(next), { n: 2, seen: { a: 1, b: 2 } });
});

test("a rejection, a bug and bad bytes become the command's error message", () => {
  const state = encode({ n: 0 });
  assert.throws(() => entity.handleCommand(witContext, state, encode({ op: "refuse" })), (e) => e === "no thanks");
  assert.throws(() => entity.handleCommand(witContext, state, encode({ op: "bug" })), (e) => /^handle failed: TypeError/.test(e));
  assert.throws(() => entity.handleCommand(witContext, state, Uint8Array.from([0xc1])), (e) => /^cannot decode command/.test(e));
});

test("a resolver's resolutions become the WIT variant", () => {
  const answers = [keep, drop, replace([{ instead: 1 }])];
  const resolver = exportResolver({ resolve: (state, ctx, incoming) => answers[incoming.event] });
  const envelope = (n) => ({ meta: witMeta, payload: encode(n) });
  assert.deepEqual(resolver.resolve(witContext, encode(null), envelope(0), []), { tag: "keep" });
  assert.deepEqual(resolver.resolve(witContext, encode(null), envelope(1), []), { tag: "drop" });
  const replaced = resolver.resolve(witContext, encode(null), envelope(2), [envelope(0)]);
  assert.equal(replaced.tag, "replace");
  assert.deepEqual(replaced.val.map(decode), [{ instead: 1 }]);
});

test("compareText orders by code point", () => {
  assert.ok(compareText("a", "b") < 0);
  assert.ok(compareText("ab", "a") > 0);
  assert.equal(compareText("x", "x"), 0);
  assert.ok(compareText("\u{FFFF}", "\u{10000}") < 0);
});

// The resident entity's batch logic. An order-sensitive list: `push` appends (one event per
// item), `pop` removes the last; `apply` records the metadata and clock each event folds with.
const list = {
  init: () => ({ items: [], seen: [] }),
  handle(state, ctx, command) {
    switch (command.op) {
      case "push":
        return { events: command.items.map((item) => ({ pushed: item })), reply: [...state.items, ...command.items] };
      case "pop":
        if (state.items.length === 0) throw new Rejected("nothing to pop");
        return { events: [{ popped: true }], reply: state.items.at(-1) };
      case "bug":
        return null.field;
      default:
        throw new Rejected(`unknown op ${command.op}`);
    }
  },
  apply(state, ctx, event) {
    const seen = [...state.seen, [ctx.event.seqNr, ctx.event.originSeqNr, ctx.event.version, ctx.now]];
    return { items: "pushed" in event ? [...state.items, event.pushed] : state.items.slice(0, -1), seen };
  },
};
const listCtx = { ...testContext("list", "l1"), now: 500 };
const first = {
  persistenceId: "list|l1", seqNr: 10, writer: "w", fencingToken: 0, timestamp: 777, originReplica: "local",
  originSeqNr: 4, version: { local: 4, other: 9 }, concurrent: false,
};
const push = (...items) => encode({ op: "push", items });
const pop = encode({ op: "pop" });

test("each command of a batch sees the events of the ones before it", () => {
  const entity = new Resident(list, listCtx, null);
  const outcomes = entity.handle(listCtx, first, [push("a"), push("b"), pop, push("c")]);
  assert.deepEqual(outcomes.map((outcome) => decode(outcome.reply)), [["a"], ["a", "b"], "b", ["a", "c"]]);
  assert.deepEqual(outcomes.map((outcome) => outcome.events.map(decode)), [
    [{ pushed: "a" }], [{ pushed: "b" }], [{ popped: true }], [{ pushed: "c" }],
  ]);
  assert.deepEqual(decode(entity.snapshot()).items, ["a", "c"]);
});

test("a rejection in the middle of a batch changes nothing and the batch goes on", () => {
  const entity = new Resident(list, listCtx, null);
  const outcomes = entity.handle(listCtx, first, [push("a"), pop, pop, encode({ op: "bug" }), Uint8Array.of(0xc1), push("b")]);
  assert.equal(decode(outcomes[1].reply), "a");
  assert.ok(outcomes[2] instanceof Rejected);
  assert.equal(outcomes[2].message, "nothing to pop");
  assert.match(outcomes[3].message, /^handle failed: TypeError/);
  // The refusal carries the stack: the caller sees where the bug is.
  assert.match(outcomes[3].message, /\n\s+at .*weft\.test\.js:\d+/);
  assert.match(outcomes[4].message, /^cannot decode command/);
  assert.deepEqual(decode(outcomes[5].reply), ["b"]);
  const state = decode(entity.snapshot());
  assert.deepEqual(state.items, ["b"]);
  // Three events were folded, numbered without a gap where the rejections were.
  assert.deepEqual(state.seen.map(([seqNr]) => seqNr), [10, 11, 12]);
});

test("the i-th event of a batch folds with the i-th metadata and its own time", () => {
  const entity = new Resident(list, listCtx, null);
  entity.handle(listCtx, first, [push("a", "b"), pop, push("c")]);
  assert.deepEqual(decode(entity.snapshot()).seen, [
    [10, 4, { local: 4, other: 9 }, 777],
    [11, 5, { local: 5, other: 9 }, 777],
    [12, 6, { local: 6, other: 9 }, 777],
    [13, 7, { local: 7, other: 9 }, 777],
  ]);
  assert.deepEqual([first.seqNr, first.version], [10, { local: 4, other: 9 }]);
  const elsewhere = nthEventMeta({ ...first, version: { other: 9 } }, 3, "local");
  assert.deepEqual([elsewhere.seqNr, elsewhere.originSeqNr, elsewhere.version, elsewhere.timestamp], [13, 7, { other: 9 }, 777]);
});

test("apply folds envelopes in order; a snapshot restores the same state", () => {
  const entity = new Resident(list, listCtx, null);
  entity.apply(listCtx, [
    { meta: { ...first, seqNr: 1, timestamp: 101 }, payload: encode({ pushed: "x" }) },
    { meta: { ...first, seqNr: 2, timestamp: 102 }, payload: encode({ pushed: "y" }) },
  ]);
  const state = decode(entity.snapshot());
  assert.deepEqual(state.items, ["x", "y"]);
  assert.deepEqual(state.seen.map(([seqNr, , , now]) => [seqNr, now]), [[1, 101], [2, 102]]);
  const restored = new Resident(list, listCtx, entity.snapshot());
  assert.deepEqual(restored.state, entity.state);
  assert.equal(decode(restored.handle(listCtx, first, [pop])[0].reply), "y");
});

test("the exported resource takes and gives the bindings' shapes", () => {
  const lost = { fencingToken: 3, reason: "expired" };
  const { Entity } = exportEntity({ ...list, onLeaseLost: (state, ctx, loss) => ({ token: loss.fencingToken, items: state.items.length }) });
  const entity = new Entity(witContext, null);
  const outcomes = entity.handle(witContext, { ...witMeta, seqNr: 10, originSeqNr: 10 }, [push("a"), pop, pop]);
  assert.deepEqual(outcomes.map((outcome) => outcome.tag), ["ok", "ok", "err"]);
  assert.deepEqual(decode(outcomes[0].val.reply), ["a"]);
  assert.equal(outcomes[2].val, "nothing to pop");
  entity.apply(witContext, [{ meta: witMeta, payload: encode({ pushed: "z" }) }]);
  const state = decode(entity.snapshot());
  assert.deepEqual(state.items, ["z"]);
  assert.deepEqual(state.seen.at(-1), [1, 1, { a: 1, b: 2 }, 7]);
  assert.deepEqual(decode(entity.onLeaseLost(witContext, lost)), { token: 3, items: 1 });
  assert.equal(new (exportEntity(list).Entity)(witContext, null).onLeaseLost(witContext, lost), null);
  assert.deepEqual(new Entity(witContext, entity.snapshot()).resident.state, entity.resident.state);
});

test("an exception's description is cut to its bound with a marker", () => {
  const error = new Error("é".repeat(EXCEPTION_TEXT_BYTES_MAX));
  const text = describeException(error);
  assert.ok(new TextEncoder().encode(text).length <= EXCEPTION_TEXT_BYTES_MAX);
  assert.ok(text.endsWith("… [cut]"));
  assert.ok(!text.includes("\uFFFD"));
  assert.equal(describeException("plain"), "plain");
});
