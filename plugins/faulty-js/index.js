// A JavaScript entity with a bug on purpose, for the tests of what a caller learns when a
// handler throws: {"op":"note","text":"..."} records the text; {"op":"divide","by":0} reads a
// field of a missing object in a helper and throws a TypeError — a bug, which the SDK refuses
// the command with, its message and stack in the refusal.

import { exportEntity, Rejected } from "../../guest-sdk/js/weft.js";

export function init() {
  return { notes: [] };
}

function share(notes, by) {
  const divisor = by === 0 ? undefined : { by };
  return notes.length / divisor.by;
}

export function handle(state, ctx, command) {
  switch (command?.op) {
    case "note":
      return { events: [{ text: String(command.text ?? "") }], reply: { ok: true } };
    case "divide":
      return { events: [], reply: { share: share(state.notes, command.by) } };
    default:
      throw new Rejected(`unknown op ${command?.op}, expected note or divide`);
  }
}

export function apply(state, ctx, event) {
  return { notes: [...state.notes, event.text] };
}

export const residentEntity = exportEntity({ init, handle, apply });
