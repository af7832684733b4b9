// Unit tests of the JavaScript counter, run natively: `node --test` in this folder.

import { test } from "node:test";
import assert from "node:assert/strict";

import { decode, encode, handleBytes, Rejected, Resident, testContext } from "../../guest-sdk/js/weft.js";
import { apply, handle, I64_MAX, init } from "./index.js";

const ctx = testContext("counter", "c1");

function run(state, command) {
  const decision = handle(state, ctx, command);
  const next = decision.events.reduce((folded, event) => apply(folded, ctx, event), state);
  // Values are BigInt after arithmetic; compare them as Numbers.
  return [{ value: Number(next.value) }, { value: Number(decision.reply.value) }];
}

test("increments and decrements", () => {
  const [state, reply] = run(init(), { op: "increment", by: 5 });
  assert.deepEqual([state, reply], [{ value: 5 }, { value: 5 }]);
  assert.deepEqual(run(state, { op: "decrement", by: 2 }), [{ value: 3 }, { value: 3 }]);
});

test("rejects a decrement below the floor", () => {
  assert.throws(() => run({ value: 3 }, { op: "decrement", by: 4 }), {
    name: "Rejected",
    message: "decrement by 4: the value 3 would go below the floor 0",
  });
});

test("rejects non-positive amounts, overflow and bad commands", () => {
  for (const command of [{ op: "increment", by: 0 }, { op: "decrement", by: -1 }]) {
    assert.throws(() => run({ value: 0 }, command), Rejected);
  }
  assert.throws(() => run({ value: I64_MAX }, { op: "increment", by: 1 }), /overflow/);
  for (const command of [{ op: "explode" }, { op: "increment", by: "1" }, [1, 2]]) {
    assert.throws(() => run({ value: 0 }, command), (error) => error instanceof Rejected && /^cannot decode command/.test(error.message));
  }
});

test("reset and get", () => {
  assert.deepEqual(run({ value: 9 }, { op: "reset" }), [{ value: 0 }, { value: 0 }]);
  assert.deepEqual(handle({ value: 4 }, ctx, { op: "get" }), { events: [], reply: { value: 4 } });
});

test("events encode like the Rust plugin", () => {
  const { events, reply } = handleBytes(handle, ctx, encode({ value: 0 }), encode({ op: "increment", by: 2 }));
  // {"type": "incremented", "by": 2}: the tag first, as serde's internally tagged enums.
  assert.deepEqual(events, [Uint8Array.from([0x82, 0xa4, ...Buffer.from("type"), 0xab, ...Buffer.from("incremented"), 0xa2, ...Buffer.from("by"), 0x02])]);
  assert.deepEqual(reply, Uint8Array.from([0x81, 0xa5, ...Buffer.from("value"), 0x02]));
});

test("a batch as the host hands it over", () => {
  const first = { persistenceId: "counter|c1", seqNr: 1, originSeqNr: 1, timestamp: 0, version: {} };
  const counter = new Resident({ init, handle, apply }, ctx, null);
  const commands = [
    { op: "increment", by: 5 },
    { op: "decrement", by: 6 },
    { op: "decrement", by: 5 },
    { op: "get" },
  ];
  const outcomes = counter.handle(ctx, first, commands.map(encode));
  assert.deepEqual(decode(outcomes[0].reply), { value: 5 });
  assert.equal(outcomes[1].message, "decrement by 6: the value 5 would go below the floor 0");
  assert.deepEqual(decode(outcomes[2].reply), { value: 0 });
  assert.deepEqual(outcomes[3], { events: [], reply: encode({ value: 0 }) });
  assert.deepEqual(decode(counter.snapshot()), { value: 0 });
});
