// {{name}}: a Headwater plugin. Multiplies the number `value` of each JSON payload by
// the config's `factor` (1 by default) and drops messages without one.
//
// Build: `headwater plugin build .` (or `npm install && npm run build`).
import { Message, emit, json, log, dispatchInit, dispatchMessage } from "./headwater_plugin";
export { hw_abi_version, hw_alloc, hw_dealloc } from "./headwater_plugin";

let factor: f64 = 1.0;

// Called once with the node's config: as JSON (null when absent).
function init(config: string): i32 {
  if (json.find(config, "factor") != null) {
    factor = json.getNumber(config, "factor");
    if (isNaN(factor)) {
      log.error("factor must be a number");
      return 1;
    }
  }
  return 0;
}

// Called once per message: what it emits is the output; no emit drops the message.
function onMessage(msg: Message): i32 {
  const value = json.getNumber(msg.payloadString(), "value");
  if (isNaN(value)) return 0;
  const code = emit(Message.fromString('{"value":' + json.number(value * factor) + "}"));
  return code == 0 ? 0 : 10;
}

export function hw_init(ptr: usize, len: i32): i32 {
  return dispatchInit(ptr, len, init);
}

export function hw_on_message(ptr: usize, len: i32): i32 {
  return dispatchMessage(ptr, len, onMessage);
}
