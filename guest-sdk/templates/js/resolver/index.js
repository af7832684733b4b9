// {{name}}: a weft conflict resolver in JavaScript.
//
// It is consulted when an event of a replicated entity is concurrent with events already applied.
// This one lets a deletion win: an incoming event concurrent with a {"type":"deleted"} event is
// dropped; everything else is kept. It must be deterministic: every replica asks it at the same
// point and must get the same answer.

import { drop, exportResolver, keep } from "./weft.js";

const isDeletion = (envelope) => envelope.event?.type === "deleted";

export function resolve(state, ctx, incoming, concurrent) {
  return concurrent.some(isDeletion) ? drop : keep;
}

export const resolver = exportResolver({ resolve });
