// The AssemblyScript SDK for Headwater plugins (plugin ABI version 1), in one file:
// the message record, the host's imports (emit, log, key/value state, clock), a small
// JSON field reader, and the exports a plugin re-exports.
//
// A plugin's entry file (compile with `asc index.ts --runtime incremental -O3`):
//
//   import { Message, emit, dispatchMessage } from "./headwater_plugin";
//   export { hw_abi_version, hw_alloc, hw_dealloc } from "./headwater_plugin";
//   export function hw_on_message(ptr: usize, len: i32): i32 {
//     return dispatchMessage(ptr, len, onMessage);
//   }
//   function onMessage(msg: Message): i32 {
//     emit(new Message(msg.payload).withTopic("copy"));
//     return 0; // 0 = handled; no emit = dropped; other = the message fails
//   }
//
// Use the `incremental` runtime (asc's default): its allocator reuses freed blocks,
// where `stub` never frees and would grow the memory with every message.

// ---- host imports (module "hw") ---------------------------------------------------

@external("hw", "emit")
declare function host_emit(port: i32, ptr: usize, len: i32): i32;
@external("hw", "log")
declare function host_log(level: i32, ptr: usize, len: i32): void;
@external("hw", "kv_get")
declare function host_kv_get(keyPtr: usize, keyLen: i32, bufPtr: usize, bufCap: i32): i32;
@external("hw", "kv_set")
declare function host_kv_set(keyPtr: usize, keyLen: i32, valPtr: usize, valLen: i32): i32;
@external("hw", "now_ms")
declare function host_now_ms(): i64;

/** The plugin ABI version this SDK speaks. */
export const ABI_VERSION: i32 = 1;

/** What `dispatchMessage` returns when the input record is malformed. */
export const ERR_MALFORMED_INPUT: i32 = 2;

// ---- exports every plugin re-exports ----------------------------------------------

/** ABI export: the version of the ABI this module speaks. */
export function hw_abi_version(): i32 {
  return ABI_VERSION;
}

/** ABI export: `len` writable bytes for the host, or 0. */
export function hw_alloc(len: i32): usize {
  if (len < 0) return 0;
  return heap.alloc(<usize>max(len, 1));
}

/** ABI export: frees what `hw_alloc(len)` returned. */
export function hw_dealloc(ptr: usize, len: i32): void {
  if (ptr != 0) heap.free(ptr);
}

// ---- the message record ---------------------------------------------------------

/** One header of a message. */
export class Header {
  constructor(public name: string, public value: string) {}
}

/**
 * A message: the input of on_message, or one to emit. In an emitted message an empty
 * topic means "the input's topic", a timestamp of 0 "the input's timestamp", and no
 * headers "the input's headers".
 */
export class Message {
  /** Milliseconds since the Unix epoch. */
  timestampMs: i64 = 0;
  /** The topic. */
  topic: string = "";
  /** Headers in order. */
  headers: Header[] = [];
  /** The payload bytes: JSON text when the source gave JSON. */
  payload: Uint8Array;

  /** A message with this payload that keeps the input's topic, timestamp and headers. */
  constructor(payload: Uint8Array) {
    this.payload = payload;
  }

  /** A message whose payload is this text (UTF-8). */
  static fromString(text: string): Message {
    return new Message(Uint8Array.wrap(String.UTF8.encode(text)));
  }

  /** This message with another topic. */
  withTopic(topic: string): Message {
    this.topic = topic;
    return this;
  }

  /** This message with another timestamp. */
  withTimestamp(timestampMs: i64): Message {
    this.timestampMs = timestampMs;
    return this;
  }

  /** This message with one more header (any header replaces all of the input's). */
  withHeader(name: string, value: string): Message {
    this.headers.push(new Header(name, value));
    return this;
  }

  /** The value of the first header called `name`, or null. */
  header(name: string): string | null {
    for (let i = 0; i < this.headers.length; i++) {
      if (this.headers[i].name == name) return this.headers[i].value;
    }
    return null;
  }

  /** The payload as text (invalid UTF-8 replaced). */
  payloadString(): string {
    return String.UTF8.decodeUnsafe(this.payload.dataStart, <usize>this.payload.length);
  }
}

function text(ptr: usize, len: u32): string {
  return String.UTF8.decodeUnsafe(ptr, <usize>len);
}

/** Reads a record at `ptr..ptr+len`; null when it is malformed. */
export function decodeMessage(ptr: usize, len: u32): Message | null {
  let at: u32 = 0;
  if (len < 8) return null;
  const timestamp = load<i64>(ptr);
  at = 8;
  if (len - at < 4) return null;
  let field = load<u32>(ptr + at);
  at += 4;
  if (len - at < field) return null;
  const topic = text(ptr + at, field);
  at += field;
  if (len - at < 4) return null;
  const count = load<u32>(ptr + at);
  at += 4;
  // Each header takes at least 8 bytes: a larger count is a lie.
  if (count > (len - at) / 8) return null;
  const headers = new Array<Header>();
  for (let i: u32 = 0; i < count; i++) {
    if (len - at < 4) return null;
    field = load<u32>(ptr + at);
    at += 4;
    if (len - at < field) return null;
    const name = text(ptr + at, field);
    at += field;
    if (len - at < 4) return null;
    field = load<u32>(ptr + at);
    at += 4;
    if (len - at < field) return null;
    const value = text(ptr + at, field);
    at += field;
    headers.push(new Header(name, value));
  }
  if (len - at < 4) return null;
  field = load<u32>(ptr + at);
  at += 4;
  if (len - at != field) return null;
  // The host frees its buffer after the call: the payload is copied.
  const payload = new Uint8Array(<i32>field);
  memory.copy(payload.dataStart, ptr + at, <usize>field);
  const msg = new Message(payload);
  msg.timestampMs = timestamp;
  msg.topic = topic;
  msg.headers = headers;
  return msg;
}

/** The record of a message. */
export function encodeMessage(msg: Message): ArrayBuffer {
  const topic = String.UTF8.encode(msg.topic);
  const names = new Array<ArrayBuffer>();
  const values = new Array<ArrayBuffer>();
  let len = 8 + 4 + topic.byteLength + 4 + 4 + msg.payload.length;
  for (let i = 0; i < msg.headers.length; i++) {
    names.push(String.UTF8.encode(msg.headers[i].name));
    values.push(String.UTF8.encode(msg.headers[i].value));
    len += 8 + names[i].byteLength + values[i].byteLength;
  }
  const record = new ArrayBuffer(len);
  const base = changetype<usize>(record);
  store<i64>(base, msg.timestampMs);
  let at: usize = 8;
  at = put(base + at, changetype<usize>(topic), topic.byteLength) - base;
  store<u32>(base + at, <u32>msg.headers.length);
  at += 4;
  for (let i = 0; i < names.length; i++) {
    at = put(base + at, changetype<usize>(names[i]), names[i].byteLength) - base;
    at = put(base + at, changetype<usize>(values[i]), values[i].byteLength) - base;
  }
  put(base + at, msg.payload.dataStart, msg.payload.length);
  return record;
}

function put(at: usize, bytes: usize, len: i32): usize {
  store<u32>(at, <u32>len);
  memory.copy(at + 4, bytes, <usize>len);
  return at + 4 + <usize>len;
}

// ---- emit, log, state, time -----------------------------------------------------

/** What `emit` returns besides 0. */
export const EMIT_UNKNOWN_PORT: i32 = -1;
/** The record was malformed. */
export const EMIT_MALFORMED: i32 = -2;
/** The per-call limit on emits (count or bytes) was reached. */
export const EMIT_LIMIT: i32 = -3;

/**
 * Sends `msg` on output port number `port` (the index in the node's `ports:` list; 0
 * is `out`). Returns 0 or a negative EMIT_* code.
 */
export function emitTo(port: i32, msg: Message): i32 {
  const record = encodeMessage(msg);
  return host_emit(port, changetype<usize>(record), record.byteLength);
}

/** Sends `msg` on port 0 (`out`). */
export function emit(msg: Message): i32 {
  return emitTo(0, msg);
}

/** Log levels, as the host numbers them. */
export enum Level {
  Trace = 0,
  Debug = 1,
  Info = 2,
  Warn = 3,
  Error = 4,
}

/** Log lines through the host, which names the node and rate-limits them. */
export namespace log {
  /** Logs `message` at `level`. */
  export function at(level: Level, message: string): void {
    const bytes = String.UTF8.encode(message);
    host_log(<i32>level, changetype<usize>(bytes), bytes.byteLength);
  }
  /** Logs at trace level. */
  export function trace(message: string): void {
    at(Level.Trace, message);
  }
  /** Logs at debug level. */
  export function debug(message: string): void {
    at(Level.Debug, message);
  }
  /** Logs at info level (not per message: info is the gateway's default level). */
  export function info(message: string): void {
    at(Level.Info, message);
  }
  /** Logs at warn level. */
  export function warn(message: string): void {
    at(Level.Warn, message);
  }
  /** Logs at error level. */
  export function error(message: string): void {
    at(Level.Error, message);
  }
}

/**
 * This node's persistent key/value state. The writes of one call are committed
 * together, durably, when it returns 0, and discarded when it fails.
 */
export namespace kv {
  /** The value of `key`, or null when absent. Sees the call's own earlier writes. */
  export function get(key: string): Uint8Array | null {
    const name = String.UTF8.encode(key);
    let buf = new Uint8Array(64);
    for (let attempt = 0; attempt < 3; attempt++) {
      const len = host_kv_get(changetype<usize>(name), name.byteLength, buf.dataStart, buf.length);
      if (len < 0) return null;
      if (len <= buf.length) return buf.subarray(0, len);
      buf = new Uint8Array(len);
    }
    return null;
  }

  /** The value of `key` as text, or null. */
  export function getString(key: string): string | null {
    const value = get(key);
    if (value == null) return null;
    return String.UTF8.decodeUnsafe(value.dataStart, <usize>value.length);
  }

  /** Sets `key` (at most 256 bytes) to `value` (at most 64 KiB): 0, -2 or -3. */
  export function set(key: string, value: Uint8Array): i32 {
    const name = String.UTF8.encode(key);
    return host_kv_set(changetype<usize>(name), name.byteLength, value.dataStart, value.length);
  }

  /** Sets `key` to text. */
  export function setString(key: string, value: string): i32 {
    return set(key, Uint8Array.wrap(String.UTF8.encode(value)));
  }

  /** Deletes `key`. */
  export function remove(key: string): i32 {
    const name = String.UTF8.encode(key);
    return host_kv_set(changetype<usize>(name), name.byteLength, 0, -1);
  }
}

/** The engine's clock in ms since the Unix epoch (virtual in Headwater's tests). */
export function nowMs(): i64 {
  return host_now_ms();
}

// ---- dispatch -------------------------------------------------------------------

/** The body of a plugin's `hw_on_message` export. */
export function dispatchMessage(ptr: usize, len: i32, handler: (msg: Message) => i32): i32 {
  const msg = decodeMessage(ptr, <u32>len);
  if (msg == null) {
    log.warn("cannot read the input: malformed message record");
    return ERR_MALFORMED_INPUT;
  }
  return handler(msg);
}

/** The body of a plugin's `hw_init` export: the handler gets the config as JSON text. */
export function dispatchInit(ptr: usize, len: i32, handler: (config: string) => i32): i32 {
  return handler(text(ptr, <u32>len));
}

// ---- JSON -----------------------------------------------------------------------

/** A small JSON reader: one field by path (`a.b`), straight from the text. */
export namespace json {
  /** Finds the text of the value at `path` (keys separated by dots; "" = all); null. */
  export function find(doc: string, path: string): string | null {
    let at = skipSpace(doc, 0);
    if (path.length > 0) {
      const keys = path.split(".");
      for (let k = 0; k < keys.length; k++) {
        if (at >= doc.length || doc.charCodeAt(at) != 0x7b) return null;
        at = skipSpace(doc, at + 1);
        let found = false;
        while (!found) {
          const keyEnd = skipString(doc, at);
          if (keyEnd < 0) return null;
          found = doc.substring(at + 1, keyEnd - 1) == keys[k];
          at = skipSpace(doc, keyEnd);
          if (at >= doc.length || doc.charCodeAt(at) != 0x3a) return null;
          at = skipSpace(doc, at + 1);
          if (found) break;
          const end = skipValue(doc, at, 1);
          if (end < 0) return null;
          at = skipSpace(doc, end);
          if (at >= doc.length || doc.charCodeAt(at) != 0x2c) return null;
          at = skipSpace(doc, at + 1);
        }
      }
    }
    const end = skipValue(doc, at, 0);
    if (end < 0) return null;
    return doc.substring(at, end);
  }

  /** The number at `path`, or NaN when absent or not a number. */
  export function getNumber(doc: string, path: string): f64 {
    const value = find(doc, path);
    if (value == null || value.length == 0) return NaN;
    const c = value.charCodeAt(0);
    if (c != 0x2d && (c < 0x30 || c > 0x39)) return NaN;
    return parseFloat(value);
  }

  /** The string at `path` (simple escapes resolved), or null. */
  export function getString(doc: string, path: string): string | null {
    const value = find(doc, path);
    if (value == null || value.length < 2 || value.charCodeAt(0) != 0x22) return null;
    const raw = value.substring(1, value.length - 1);
    if (raw.indexOf("\\") < 0) return raw;
    let out = "";
    for (let i = 0; i < raw.length; i++) {
      let c = raw.charAt(i);
      if (c == "\\" && i + 1 < raw.length) {
        i++;
        const e = raw.charAt(i);
        if (e == "n") c = "\n";
        else if (e == "t") c = "\t";
        else if (e == "r") c = "\r";
        else if (e == "u" && i + 4 < raw.length) {
          c = String.fromCharCode(<i32>parseInt(raw.substring(i + 1, i + 5), 16));
          i += 4;
        } else c = e;
      }
      out += c;
    }
    return out;
  }

  /** The boolean at `path`: 1 true, 0 false, -1 absent or not a boolean. */
  export function getBool(doc: string, path: string): i32 {
    const value = find(doc, path);
    if (value == "true") return 1;
    if (value == "false") return 0;
    return -1;
  }

  /** A JSON string literal of `value`. */
  export function quote(value: string): string {
    let out = '"';
    for (let i = 0; i < value.length; i++) {
      const c = value.charCodeAt(i);
      if (c == 0x22) out += '\\"';
      else if (c == 0x5c) out += "\\\\";
      else if (c == 0x0a) out += "\\n";
      else if (c < 0x20) out += "\\u00" + (c < 16 ? "0" : "") + c.toString(16);
      else out += value.charAt(i);
    }
    return out + '"';
  }

  /** A JSON number literal (`null` for NaN and the infinities). */
  export function number(value: f64): string {
    if (!isFinite(value)) return "null";
    if (value == Math.floor(value) && Math.abs(value) < 1e15) return (<i64>value).toString();
    return value.toString();
  }

  function skipSpace(doc: string, at: i32): i32 {
    while (at < doc.length) {
      const c = doc.charCodeAt(at);
      if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) break;
      at++;
    }
    return at;
  }

  function skipString(doc: string, at: i32): i32 {
    if (at >= doc.length || doc.charCodeAt(at) != 0x22) return -1;
    for (at++; at < doc.length; at++) {
      const c = doc.charCodeAt(at);
      if (c == 0x22) return at + 1;
      if (c == 0x5c) at++;
      else if (c < 0x20) return -1;
    }
    return -1;
  }

  function skipValue(doc: string, at: i32, depth: i32): i32 {
    if (depth > 64 || at >= doc.length) return -1;
    const c = doc.charCodeAt(at);
    if (c == 0x22) return skipString(doc, at);
    if (c == 0x7b || c == 0x5b) {
      const close = c == 0x7b ? 0x7d : 0x5d;
      at = skipSpace(doc, at + 1);
      if (at < doc.length && doc.charCodeAt(at) == close) return at + 1;
      while (true) {
        at = skipSpace(doc, at);
        if (c == 0x7b) {
          at = skipString(doc, at);
          if (at < 0) return -1;
          at = skipSpace(doc, at);
          if (at >= doc.length || doc.charCodeAt(at) != 0x3a) return -1;
          at = skipSpace(doc, at + 1);
        }
        at = skipValue(doc, at, depth + 1);
        if (at < 0) return -1;
        at = skipSpace(doc, at);
        if (at >= doc.length) return -1;
        const next = doc.charCodeAt(at);
        at++;
        if (next == close) return at;
        if (next != 0x2c) return -1;
      }
    }
    const start = at;
    while (at < doc.length) {
      const d = doc.charCodeAt(at);
      if ((d >= 0x30 && d <= 0x39) || (d >= 0x61 && d <= 0x7a) || d == 0x2d || d == 0x2b || d == 0x2e || d == 0x45) at++;
      else break;
    }
    return at > start ? at : -1;
  }
}
