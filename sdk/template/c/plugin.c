/* {{name}}: a Headwater plugin. Multiplies the number `value` of each JSON payload by
 * the config's `factor` (1 by default) and drops messages without one.
 *
 * Build: `headwater plugin build .`, or
 *   clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -o build/{{name}}.wasm plugin.c */
#include "headwater_plugin.h"

static double factor = 1.0;

/* Called once with the node's config: as JSON (null when absent). */
static int32_t init(const uint8_t *config, uint32_t len) {
    uint32_t start, value_len;
    if (hw_json_find(config, len, "factor", &start, &value_len) &&
        !hw_json_parse_number(config + start, value_len, &factor)) {
        hw_log_str(HW_ERROR, "factor must be a number");
        return 1;
    }
    return 0;
}

/* Called once per message: what it emits is the output; no emit drops the message. */
static int32_t on_message(const hw_message *msg) {
    double value;
    if (!hw_json_number(msg->payload, msg->payload_len, "value", &value)) return 0;
    char text[64] = "{\"value\":";
    uint32_t len = 9;
    uint32_t n = hw_fmt_double(text + len, sizeof text - len - 1, value * factor, 6);
    if (n == 0) return 3;
    len += n;
    text[len++] = '}';
    hw_message out = hw_message_new((const uint8_t *)text, len);
    return hw_emit(0, &out) == 0 ? 0 : 10;
}

HW_PLUGIN_WITH_INIT(init, on_message)
