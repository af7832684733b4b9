// Unit tests of the JavaScript highest-bid resolver, run natively: `node --test` in this folder.

import { test } from "node:test";
import assert from "node:assert/strict";

import { drop, encode, keep, resolveBytes, testContext } from "../../guest-sdk/js/weft.js";
import { resolve } from "./index.js";

const bid = (amount, replica) => ({ meta: { originReplica: replica }, event: { amount } });
const run = (incoming, concurrent) => resolve({}, testContext("auction", "a1"), incoming, concurrent);

test("the highest bid wins", () => {
  assert.equal(run(bid(10, "b"), [bid(7, "a")]), keep);
  assert.equal(run(bid(7, "a"), [bid(10, "b")]), drop);
  assert.equal(run(bid(2n ** 60n, "b"), [bid(2 ** 40, "a")]), keep);
});

test("ties go to the lower replica", () => {
  assert.equal(run(bid(5, "a"), [bid(5, "b")]), keep);
  assert.equal(run(bid(5, "b"), [bid(5, "a")]), drop);
  // U+FFFF sorts before U+10000 by code point, though not by UTF-16 code unit.
  assert.equal(run(bid(5, "\u{FFFF}"), [bid(5, "\u{10000}")]), keep);
});

test("non-bids are kept and ignored", () => {
  const note = { meta: { originReplica: "z" }, event: { text: "hi" } };
  assert.equal(run(note, [bid(5, "a")]), keep);
  assert.equal(run(bid(1, "z"), [note]), keep);
});

test("over bytes, as the host calls it", () => {
  const resolution = resolveBytes(
    resolve,
    testContext("auction", "a1"),
    encode(null),
    { meta: { originReplica: "b" }, payload: encode({ amount: 3 }) },
    [{ meta: { originReplica: "a" }, payload: encode({ amount: 4 }) }],
  );
  assert.equal(resolution, drop);
});
