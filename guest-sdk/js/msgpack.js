// MessagePack with named fields: the encoding of every payload that crosses the WIT boundary.
//
// A small encoder and decoder in plain JavaScript (no dependencies, no Web APIs), so it runs in
// QuickJS inside a component and in Node natively. Encoding picks the same formats as the Rust
// SDK's `rmp_serde::to_vec_named`: integers in their smallest format (non-negative ones as
// unsigned), other numbers as float64, strings as str, Uint8Array as bin, objects as maps in
// property order. Decoding gives plain values: integers beyond ±2^53 arrive as BigInt, maps
// whose keys are all strings as objects (otherwise as a Map), bin as Uint8Array.

/** Nesting deeper than this is refused rather than risking the engine's stack. */
const DEPTH_MAX = 256;

const I64_MIN = -(2n ** 63n);
const U64_MAX = 2n ** 64n - 1n;

/** A MessagePack extension value, kept as its type code and raw data. */
export class Ext {
  constructor(code, data) {
    this.code = code;
    this.data = Uint8Array.from(data);
  }
}

/** Bytes that are not one MessagePack value, or a value that cannot be encoded. */
export class CodecError extends Error {}

/** A scratch buffer larger than this is not kept for the next `encode`. */
const SCRATCH_KEEP_MAX = 64 * 1024;

/** The writer the next `encode` may reuse (null while one is in use). */
let idleWriter = null;

/** Encodes a plain value (null, boolean, number, bigint, string, Uint8Array, array, object, Map, Ext). */
export function encode(value) {
  // Reusing one writer spares an allocation per value: every command, event and reply of a
  // resident entity is encoded here.
  const writer = idleWriter ?? new Writer();
  idleWriter = null;
  try {
    writer.length = 0;
    writer.value(value, 0);
    return writer.finish();
  } finally {
    if (writer.bytes.length <= SCRATCH_KEEP_MAX) idleWriter = writer;
  }
}

/** How many encoded short ASCII strings (field names, tags) are kept for reuse. */
const TEXT_CACHE_MAX = 1024;

/** Short ASCII string -> its fixstr encoding, filled until it holds TEXT_CACHE_MAX. */
const encodedTexts = new Map();

class Writer {
  constructor() {
    this.bytes = new Uint8Array(64);
    this.view = new DataView(this.bytes.buffer);
    this.length = 0;
  }

  reserve(count) {
    if (this.length + count <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + count) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }

  byte(b) {
    this.reserve(1);
    this.bytes[this.length++] = b;
  }

  /** Writes `marker` then `value` as a big-endian field of `size` bytes (1, 2, 4 or 8). */
  field(marker, size, value, signed = false) {
    this.byte(marker);
    this.reserve(size);
    const at = this.length;
    if (size === 1) signed ? this.view.setInt8(at, value) : this.view.setUint8(at, value);
    else if (size === 2) signed ? this.view.setInt16(at, value) : this.view.setUint16(at, value);
    else if (size === 4) signed ? this.view.setInt32(at, value) : this.view.setUint32(at, value);
    else signed ? this.view.setBigInt64(at, BigInt(value)) : this.view.setBigUint64(at, BigInt(value));
    this.length += size;
  }

  raw(data) {
    this.reserve(data.length);
    this.bytes.set(data, this.length);
    this.length += data.length;
  }

  finish() {
    return this.bytes.slice(0, this.length);
  }

  value(value, depth) {
    if (depth > DEPTH_MAX) throw new CodecError(`cannot encode: nested deeper than ${DEPTH_MAX} levels`);
    if (value === null || value === undefined) this.byte(0xc0);
    else if (value === true) this.byte(0xc3);
    else if (value === false) this.byte(0xc2);
    else if (typeof value === "number") {
      if (Number.isSafeInteger(value)) this.integer(value);
      else this.float(value);
    } else if (typeof value === "bigint") this.bigInteger(value);
    else if (typeof value === "string") this.text(value);
    else if (value instanceof Uint8Array) {
      this.header(value.length, null, [0xc4, 0xc5, 0xc6]);
      this.raw(value);
    } else if (Array.isArray(value)) {
      this.header(value.length, [0x90, 16], [null, 0xdc, 0xdd]);
      for (const item of value) this.value(item, depth + 1);
    } else if (value instanceof Ext) this.ext(value);
    else if (value instanceof Map) {
      this.header(value.size, [0x80, 16], [null, 0xde, 0xdf]);
      for (const [key, item] of value) this.value(key, depth + 1), this.value(item, depth + 1);
    } else if (typeof value === "object") {
      // Like JSON: properties whose value is undefined are left out.
      const keys = Object.keys(value);
      let count = 0;
      for (const key of keys) if (value[key] !== undefined) count++;
      this.header(count, [0x80, 16], [null, 0xde, 0xdf]);
      for (const key of keys) {
        const item = value[key];
        if (item !== undefined) this.text(key), this.value(item, depth + 1);
      }
    } else throw new CodecError(`cannot encode a value of type ${typeof value}`);
  }

  text(value) {
    if (value.length < 32) {
      // ASCII that fits a fixstr, the common case (field names, tags): encoded once.
      let encoded = encodedTexts.get(value);
      if (encoded === undefined && isAscii(value)) {
        encoded = new Uint8Array(value.length + 1);
        encoded[0] = 0xa0 | value.length;
        for (let i = 0; i < value.length; i++) encoded[i + 1] = value.charCodeAt(i);
        if (encodedTexts.size < TEXT_CACHE_MAX) encodedTexts.set(value, encoded);
      }
      if (encoded !== undefined) {
        this.raw(encoded);
        return;
      }
    }
    const data = utf8Encode(value);
    this.header(data.length, [0xa0, 32], [0xd9, 0xda, 0xdb]);
    this.raw(data);
  }

  float(value) {
    this.byte(0xcb);
    this.reserve(8);
    this.view.setFloat64(this.length, value);
    this.length += 8;
  }

  /** A safe-integer Number, in its smallest format (as rmp writes it). */
  integer(value) {
    if (value >= 0) {
      if (value < 0x80) this.byte(value);
      else if (value <= 0xff) this.field(0xcc, 1, value);
      else if (value <= 0xffff) this.field(0xcd, 2, value);
      else if (value <= 0xffffffff) this.field(0xce, 4, value);
      else this.field(0xcf, 8, value);
    } else if (value >= -32) this.byte(0x100 + value);
    else if (value >= -0x80) this.field(0xd0, 1, value, true);
    else if (value >= -0x8000) this.field(0xd1, 2, value, true);
    else if (value >= -0x80000000) this.field(0xd2, 4, value, true);
    else this.field(0xd3, 8, value, true);
  }

  /** A BigInt: as a Number when it is one, else in a 64-bit format. */
  bigInteger(value) {
    if (value < I64_MIN || value > U64_MAX) {
      throw new CodecError(`cannot encode ${value}: outside the 64-bit integer range`);
    }
    if (value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
      this.integer(Number(value));
    } else if (value > 0n) this.field(0xcf, 8, value);
    else this.field(0xd3, 8, value, true);
  }

  /** The header of a str, bin, array or map: its fix form if any, else the 8/16/32-bit one. */
  header(length, fix, markers) {
    if (fix && length < fix[1]) this.byte(fix[0] | length);
    else if (markers[0] !== null && length <= 0xff) this.field(markers[0], 1, length);
    else if (length <= 0xffff) this.field(markers[1], 2, length);
    else this.field(markers[2], 4, length);
  }

  ext(value) {
    const fixed = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
    const size = value.data.length;
    if (fixed[size]) this.byte(fixed[size]);
    else this.header(size, null, [0xc7, 0xc8, 0xc9]);
    this.reserve(1);
    this.view.setInt8(this.length++, value.code);
    this.raw(value.data);
  }
}

/** Decodes exactly one MessagePack value from a Uint8Array (or an array of bytes). */
export function decode(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes);
  const reader = new Reader(data);
  const value = reader.value(0);
  if (reader.pos !== data.length) {
    throw new CodecError(`${data.length - reader.pos} bytes follow the MessagePack value`);
  }
  return value;
}

class Reader {
  constructor(data) {
    this.data = data;
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.pos = 0;
  }

  need(count) {
    if (this.pos + count > this.data.length) {
      throw new CodecError(`unexpected end of data at byte ${this.pos} (wanted ${count} more)`);
    }
    const at = this.pos;
    this.pos += count;
    return at;
  }

  take(count) {
    const at = this.need(count);
    return this.data.slice(at, at + count);
  }

  uint(size) {
    const at = this.need(size);
    if (size === 1) return this.view.getUint8(at);
    if (size === 2) return this.view.getUint16(at);
    if (size === 4) return this.view.getUint32(at);
    return safe(this.view.getBigUint64(at));
  }

  int(size) {
    const at = this.need(size);
    if (size === 1) return this.view.getInt8(at);
    if (size === 2) return this.view.getInt16(at);
    if (size === 4) return this.view.getInt32(at);
    return safe(this.view.getBigInt64(at));
  }

  value(depth) {
    if (depth > DEPTH_MAX) throw new CodecError(`nested deeper than ${DEPTH_MAX} levels`);
    const marker = this.data[this.need(1)];
    if (marker <= 0x7f) return marker;
    if (marker >= 0xe0) return marker - 0x100;
    if (marker <= 0x8f) return this.map(marker & 0x0f, depth);
    if (marker <= 0x9f) return this.array(marker & 0x0f, depth);
    if (marker <= 0xbf) return this.text(marker & 0x1f);
    switch (marker) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.take(this.uint(1));
      case 0xc5: return this.take(this.uint(2));
      case 0xc6: return this.take(this.uint(4));
      case 0xc7: return this.ext(this.uint(1));
      case 0xc8: return this.ext(this.uint(2));
      case 0xc9: return this.ext(this.uint(4));
      case 0xca: return this.view.getFloat32(this.need(4));
      case 0xcb: return this.view.getFloat64(this.need(8));
      case 0xcc: return this.uint(1);
      case 0xcd: return this.uint(2);
      case 0xce: return this.uint(4);
      case 0xcf: return this.uint(8);
      case 0xd0: return this.int(1);
      case 0xd1: return this.int(2);
      case 0xd2: return this.int(4);
      case 0xd3: return this.int(8);
      case 0xd4: return this.ext(1);
      case 0xd5: return this.ext(2);
      case 0xd6: return this.ext(4);
      case 0xd7: return this.ext(8);
      case 0xd8: return this.ext(16);
      case 0xd9: return this.text(this.uint(1));
      case 0xda: return this.text(this.uint(2));
      case 0xdb: return this.text(this.uint(4));
      case 0xdc: return this.array(this.uint(2), depth);
      case 0xdd: return this.array(this.uint(4), depth);
      case 0xde: return this.map(this.uint(2), depth);
      case 0xdf: return this.map(this.uint(4), depth);
      default:
        throw new CodecError(`byte 0x${marker.toString(16)} at ${this.pos - 1} starts no MessagePack value`);
    }
  }

  text(size) {
    const at = this.need(size);
    return utf8Decode(this.data, at, at + size);
  }

  array(size, depth) {
    const items = [];
    for (let i = 0; i < size; i++) items.push(this.value(depth + 1));
    return items;
  }

  map(size, depth) {
    // An object while every key is a string (the common case), else a Map.
    let object = {};
    let map = null;
    for (let i = 0; i < size; i++) {
      const key = this.value(depth + 1);
      const item = this.value(depth + 1);
      if (map === null && typeof key !== "string") map = new Map(Object.entries(object));
      if (map !== null) map.set(key, item);
      else if (key === "__proto__") {
        // Data, never the prototype.
        Object.defineProperty(object, key, { value: item, enumerable: true, writable: true, configurable: true });
      } else object[key] = item;
    }
    return map ?? object;
  }

  ext(size) {
    const code = this.view.getInt8(this.need(1));
    return new Ext(code, this.take(size));
  }
}

/** Strings up to this many bytes are decoded in one call when they are ASCII. */
const SHORT_TEXT_MAX = 32;

/** A 64-bit integer as a Number when that is exact, else as a BigInt. */
function safe(big) {
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

function isAscii(text) {
  return !NOT_ASCII.test(text);
}

const NOT_ASCII = /[^\x00-\x7f]/;

function utf8Encode(text) {
  const out = [];
  for (const char of text) {
    let code = char.codePointAt(0);
    // A lone surrogate has no UTF-8 form: write U+FFFD, as TextEncoder does.
    if (code >= 0xd800 && code <= 0xdfff) code = 0xfffd;
    if (code < 0x80) out.push(code);
    else if (code < 0x800) out.push(0xc0 | (code >> 6), 0x80 | (code & 0x3f));
    else if (code < 0x10000) out.push(0xe0 | (code >> 12), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f));
    else out.push(0xf0 | (code >> 18), 0x80 | ((code >> 12) & 0x3f), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f));
  }
  return Uint8Array.from(out);
}

function utf8Decode(bytes, start, end) {
  if (end - start <= SHORT_TEXT_MAX) {
    // Short ASCII, the common case (field names, tags): a character per byte, in one call.
    const text = String.fromCharCode.apply(null, bytes.subarray(start, end));
    if (isAscii(text)) return text;
  }
  return utf8DecodeAny(bytes, start, end);
}

function utf8DecodeAny(bytes, start, end) {
  const points = [];
  let i = start;
  const invalid = () => new CodecError(`a string is not UTF-8 (byte ${i})`);
  const continuation = (at) => {
    if (at >= end || (bytes[at] & 0xc0) !== 0x80) throw invalid();
    return bytes[at] & 0x3f;
  };
  while (i < end) {
    const b = bytes[i];
    if (b < 0x80) {
      points.push(b);
      i += 1;
    } else if (b >= 0xc2 && b < 0xe0) {
      points.push(((b & 0x1f) << 6) | continuation(i + 1));
      i += 2;
    } else if (b >= 0xe0 && b < 0xf0) {
      const code = ((b & 0x0f) << 12) | (continuation(i + 1) << 6) | continuation(i + 2);
      if (code < 0x800 || (code >= 0xd800 && code <= 0xdfff)) throw invalid();
      points.push(code);
      i += 3;
    } else if (b >= 0xf0 && b < 0xf5) {
      const code =
        ((b & 0x07) << 18) | (continuation(i + 1) << 12) | (continuation(i + 2) << 6) | continuation(i + 3);
      if (code < 0x10000 || code > 0x10ffff) throw invalid();
      points.push(code);
      i += 4;
    } else throw invalid();
  }
  // In chunks: `apply` passes every code point as an argument, and engines cap their number.
  let text = "";
  for (let at = 0; at < points.length; at += 8192) {
    text += String.fromCodePoint.apply(null, points.slice(at, at + 8192));
  }
  return text;
}
