// The MessagePack codec against the shared vectors (the bytes rmp_serde writes), and its errors.
// Run natively: `node --test guest-sdk/js/`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { CodecError, decode, encode, Ext } from "./msgpack.js";

const vectors = JSON.parse(readFileSync(new URL("../testdata/msgpack-vectors.json", import.meta.url), "utf8")).vectors;

/** Undoes the `{"$int": "digits"}` wrapping of integers beyond ±(2^53-1). */
function revive(value) {
  if (Array.isArray(value)) return value.map(revive);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$int") return BigInt(value.$int);
    return Object.fromEntries(keys.map((key) => [key, revive(value[key])]));
  }
  return value;
}

const hex = (bytes) => Buffer.from(bytes).toString("hex");

test("encodes every vector byte for byte and decodes it back", () => {
  assert.ok(vectors.length > 40);
  for (const vector of vectors) {
    const value = revive(vector.value);
    // 3.0 reads as the integer 3 in JavaScript: that vector is for the languages that tell them apart.
    if (vector.msgpack.startsWith("cb") && Number.isInteger(value)) continue;
    assert.equal(hex(encode(value)), vector.msgpack, `vector ${JSON.stringify(vector.value)}`);
    assert.deepEqual(decode(Buffer.from(vector.msgpack, "hex")), value);
  }
});

test("bytes, maps with other keys, ext, float32", () => {
  assert.equal(hex(encode(Uint8Array.from([1, 2]))), "c4020102");
  assert.deepEqual(decode(Uint8Array.from([0xc4, 2, 1, 2])), Uint8Array.from([1, 2]));
  assert.deepEqual(decode(encode(new Map([[1, "one"]]))), new Map([[1, "one"]]));
  assert.deepEqual(decode(encode(new Ext(5, [1, 2, 3, 4]))), new Ext(5, [1, 2, 3, 4]));
  assert.equal(decode(Uint8Array.from([0xca, 0x3f, 0xc0, 0, 0])), 1.5);
  assert.equal(hex(encode({ a: 1, gone: undefined })), "81a16101");
});

test("long strings, ASCII or not, round-trip", () => {
  for (const text of ["x".repeat(100_000), "é€😀".repeat(30_000)]) {
    const bytes = encode(text);
    assert.equal(bytes[0], 0xdb); // str32: the length needs more than 16 bits
    assert.equal(decode(bytes), text);
  }
});

test("encoded bytes are the caller's own, however many values and strings follow", () => {
  const first = encode({ type: "first", by: 1 });
  const copy = Uint8Array.from(first);
  // More distinct short strings than are kept encoded, a value larger than the reused buffer,
  // then small ones again: each comes out right, and the first bytes never change.
  for (let i = 0; i < 3000; i++) {
    const key = `k${i}`;
    assert.equal(hex(encode(key)), hex([0xa0 | key.length, ...Buffer.from(key)]));
  }
  assert.equal(decode(encode("y".repeat(200_000))).length, 200_000);
  assert.deepEqual(decode(encode({ type: "second", by: 2 })), { type: "second", by: 2 });
  assert.deepEqual(first, copy);
  assert.deepEqual(decode(first), { type: "first", by: 1 });
});

test("a __proto__ key is data", () => {
  const decoded = decode(encode(new Map([["__proto__", { polluted: true }]])));
  assert.equal(Object.getPrototypeOf(decoded), Object.prototype);
  assert.deepEqual(Object.keys(decoded), ["__proto__"]);
  assert.equal({}.polluted, undefined);
});

test("refuses what it cannot encode", () => {
  for (const value of [2n ** 64n, -(2n ** 63n) - 1n, () => 1, Symbol("s")]) {
    assert.throws(() => encode(value), CodecError);
  }
  let deep = [];
  for (let i = 0; i < 260; i++) deep = [deep];
  assert.throws(() => encode(deep), CodecError);
});

test("refuses malformed bytes with a reason", () => {
  const cases = [
    [[], /unexpected end/],
    [[0xc1], /starts no MessagePack value/],
    [[0x92, 0x01], /unexpected end/],
    [[0xc0, 0xc0], /follow the MessagePack value/],
    [[0xa2, 0xff, 0xfe], /not UTF-8/],
    [new Array(300).fill(0x91).concat([0xc0]), /nested deeper/],
  ];
  for (const [bytes, reason] of cases) {
    assert.throws(() => decode(Uint8Array.from(bytes)), (error) => error instanceof CodecError && reason.test(error.message));
  }
});
