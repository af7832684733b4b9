// Unit tests of {{name}}, run natively: `node --test`.

import { test } from "node:test";
import assert from "node:assert/strict";

import { decode, encode, handleBytes, Rejected, testContext } from "./weft.js";
import { apply, handle, init } from "./index.js";

const ctx = testContext("{{name}}", "e1");

function run(state, command) {
  const decision = handle(state, ctx, command);
  return [decision.events.reduce((folded, event) => apply(folded, ctx, event), state), decision.reply];
}

test("add then get", () => {
  const [state, reply] = run(init(ctx), { op: "add", by: 3 });
  assert.deepEqual([state, reply], [{ total: 3 }, { total: 3 }]);
  assert.deepEqual(run(state, { op: "get" }), [state, { total: 3 }]);
});

test("rejects bad commands", () => {
  for (const command of [{ op: "add", by: 0 }, { op: "add" }, { op: "explode" }]) {
    assert.throws(() => run({ total: 0 }, command), Rejected);
  }
});

test("over bytes, as the host calls it", () => {
  const { events, reply } = handleBytes(handle, ctx, encode({ total: 1 }), encode({ op: "add", by: 2 }));
  assert.deepEqual(events.map(decode), [{ type: "added", by: 2 }]);
  assert.deepEqual(decode(reply), { total: 3 });
});
