// A resolver for auctions, in JavaScript: the same decisions as the Rust plugin
// `plugins/highest-bid`.
//
// When bids are concurrent, the highest wins. It reads only the `amount` field of each event, so
// it serves any entity whose bid events carry one, in any language. An incoming bid is kept when
// it beats every concurrent bid (ties go to the lower origin replica id, so every replica decides
// the same); otherwise it is dropped. Events without an amount are not bids and are always kept.

import { compareText, drop, exportResolver, keep } from "../../guest-sdk/js/weft.js";

const U64_MAX = 2n ** 64n - 1n;

/** The amount of a bid event as a BigInt, or null for an event that is not a bid. */
function bid(envelope) {
  const event = envelope.event;
  if (event === null || typeof event !== "object" || Array.isArray(event)) {
    throw new TypeError("an event is not a map");
  }
  const amount = event.amount;
  if (amount === undefined || amount === null) return null;
  const integer = typeof amount === "bigint" || Number.isSafeInteger(amount);
  if (!integer || amount < 0 || BigInt(amount) > U64_MAX) {
    throw new TypeError(`\`amount\` must be an unsigned 64-bit integer, not ${String(amount)}`);
  }
  return BigInt(amount);
}

/** True when bid `other` ranks above `incoming`: a higher amount, or the same amount from a
 *  lower origin replica id (ordered by code point, as Rust and Python order strings). */
function beats(otherAmount, other, amount, incoming) {
  if (otherAmount !== amount) return otherAmount > amount;
  return compareText(other.meta.originReplica, incoming.meta.originReplica) < 0;
}

export function resolve(state, ctx, incoming, concurrent) {
  const amount = bid(incoming);
  if (amount === null) return keep;
  for (const other of concurrent) {
    const otherAmount = bid(other);
    if (otherAmount !== null && beats(otherAmount, other, amount, incoming)) return drop;
  }
  return keep;
}

export const resolver = exportResolver({ resolve });
