// Unit tests of {{name}}, run natively: `node --test`.

import { test } from "node:test";
import assert from "node:assert/strict";

import { drop, keep, testContext } from "./weft.js";
import { resolve } from "./index.js";

const ctx = testContext("{{name}}", "e1");
const event = (payload, replica = "a") => ({ meta: { originReplica: replica }, event: payload });

test("a concurrent deletion wins", () => {
  assert.equal(resolve(null, ctx, event({ type: "renamed", to: "x" }, "b"), [event({ type: "deleted" })]), drop);
});

test("everything else is kept", () => {
  const incoming = event({ type: "renamed", to: "x" }, "b");
  assert.equal(resolve(null, ctx, incoming, []), keep);
  assert.equal(resolve(null, ctx, incoming, [event({ type: "renamed" })]), keep);
});
