// The SDK's WIT plumbing, called the way the component calls it, natively: `node --test guest-sdk/js/`.

import { test } from "node:test";
import assert from "node:assert/strict";

import { compareText, decode, drop, encode, exportEntity, exportResolver, keep, Rejected, replace, testContext } from "./weft.js";

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
