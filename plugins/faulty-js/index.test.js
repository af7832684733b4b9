// Unit tests of the faulty JavaScript entity, run natively with `node --test` (`cargo xtask
// test` runs them).

import { test } from "node:test";
import assert from "node:assert/strict";

import { handle, init } from "./index.js";

test("a note is recorded", () => {
  assert.deepEqual(handle(init(), null, { op: "note", text: "hi" }).events, [{ text: "hi" }]);
});

test("dividing by zero is a bug, not a refusal", () => {
  assert.throws(() => handle(init(), null, { op: "divide", by: 0 }), TypeError);
});
