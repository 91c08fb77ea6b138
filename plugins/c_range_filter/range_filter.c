/* range_filter: passes the messages whose number at `field` lies within [min, max],
 * unchanged, and drops the others (and those without the number).
 *
 * config: { field: "value", min: 0, max: 100 }  (give min, max or both; field "" reads
 * a bare-number payload). A bad config stops the node with the reason in the log. */
#include "headwater_plugin.h"

static char field[128] = "value";
static bool has_min, has_max;
static double min, max;

static int32_t fail(const char *why) {
    hw_log_str(HW_ERROR, why);
    return 1;
}

static int32_t init(const uint8_t *config, uint32_t len) {
    const char *text;
    uint32_t text_len;
    if (hw_json_string(config, len, "field", &text, &text_len)) {
        if (text_len >= sizeof field) return fail("field is too long (127 bytes at most)");
        memcpy(field, text, text_len);
        field[text_len] = 0;
    }
    has_min = hw_json_number(config, len, "min", &min);
    has_max = hw_json_number(config, len, "max", &max);
    if (!has_min && !has_max) return fail("give a range: config: { min: NUMBER, max: NUMBER }");
    if (has_min && has_max && min > max) return fail("min is above max");
    return 0;
}

static int32_t on_message(const hw_message *msg) {
    double value;
    if (!hw_json_number(msg->payload, msg->payload_len, field, &value)) return 0;
    if ((has_min && value < min) || (has_max && value > max)) return 0; /* dropped */
    hw_message out = hw_message_new(msg->payload, msg->payload_len);
    int32_t code = hw_emit(0, &out);
    return code == 0 ? 0 : 10 - code;
}

HW_PLUGIN_WITH_INIT(init, on_message)
