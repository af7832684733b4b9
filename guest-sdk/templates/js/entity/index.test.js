// Unit tests of {{name}}, run natively: `node --test`.

import { test } from "node:test";
import assert from "node:assert/strict";

import { decode, encode, Rejected, Resident, testContext } from "./weft.js";
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

test("a batch over bytes, as the host hands it over", () => {
  const entity = new Resident({ init, handle, apply }, ctx, null);
  const first = { persistenceId: "{{name}}|e1", seqNr: 1, originSeqNr: 1, timestamp: 0, version: {} };
  const commands = [{ op: "add", by: 2 }, { op: "add", by: 0 }, { op: "add", by: 3 }];
  const [added, rejected, next] = entity.handle(ctx, first, commands.map(encode));
  assert.deepEqual(added.events.map(decode), [{ type: "added", by: 2 }]);
  assert.ok(rejected instanceof Rejected);
  assert.deepEqual(decode(next.reply), { total: 5 });
  assert.deepEqual(decode(entity.snapshot()), { total: 5 });
});
