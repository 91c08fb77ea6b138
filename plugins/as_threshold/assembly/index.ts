// as_threshold: the threshold alert in AssemblyScript. Readings whose number at `field`
// is above `above` go on `out` unchanged and, as an alert, on port 1 (`alert`) with the
// topic `TOPIC/alert`; other readings go on `out`; messages without the number are
// dropped.
//
// config: { field: "value", above: 30 }   (the node needs ports: [out, alert])
import { Message, emit, emitTo, json, log, dispatchInit, dispatchMessage } from "../../../sdk/assemblyscript/assembly/index";
export { hw_abi_version, hw_alloc, hw_dealloc } from "../../../sdk/assemblyscript/assembly/index";

const ALERT_PORT: i32 = 1;

let field = "value";
let above: f64 = NaN;

function init(config: string): i32 {
  above = json.getNumber(config, "above");
  if (isNaN(above)) {
    log.error("give a limit: config: { above: NUMBER }");
    return 1;
  }
  const name = json.getString(config, "field");
  if (name != null) field = name;
  return 0;
}

function onMessage(msg: Message): i32 {
  const value = json.getNumber(msg.payloadString(), field);
  if (isNaN(value)) return 0; // nothing to compare: dropped
  let code = emit(new Message(msg.payload));
  if (code == 0 && value > above) {
    const alert =
      '{"alert":"above","value":' + json.number(value) +
      ',"limit":' + json.number(above) +
      ',"topic":' + json.quote(msg.topic) + "}";
    code = emitTo(ALERT_PORT, Message.fromString(alert).withTopic(msg.topic + "/alert"));
  }
  return code == 0 ? 0 : 10 - code;
}

export function hw_init(ptr: usize, len: i32): i32 {
  return dispatchInit(ptr, len, init);
}

export function hw_on_message(ptr: usize, len: i32): i32 {
  return dispatchMessage(ptr, len, onMessage);
}
