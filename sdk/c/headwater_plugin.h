/* headwater_plugin.h: the C SDK for Headwater plugins (plugin ABI version 1), in one
 * header: the message record, the host's imports (emit, log, key/value state, clock),
 * a small allocator for -nostdlib builds, a JSON field reader and number formatter,
 * and the HW_PLUGIN macros that generate the exports.
 *
 * Build a plugin (Debian: apt-get install clang lld):
 *   clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -o plugin.wasm plugin.c
 * The exports are named by attributes, so no --export flags are needed.
 *
 * A plugin in full:
 *   #include "headwater_plugin.h"
 *   static int32_t on_message(const hw_message *msg) {
 *       hw_message out = hw_message_new(msg->payload, msg->payload_len);
 *       return hw_emit(0, &out) == 0 ? 0 : 10;    // nothing emitted = dropped
 *   }
 *   HW_PLUGIN(on_message)
 *
 * Every function here is static: include the header in one .c file of the plugin.
 */
#ifndef HEADWATER_PLUGIN_H
#define HEADWATER_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "headwater_plugin.h targets wasm32: build with clang --target=wasm32"
#endif

/* The plugin ABI version this header speaks. */
#define HW_ABI_VERSION 1

/* Log levels, as the host numbers them. */
enum { HW_TRACE = 0, HW_DEBUG = 1, HW_INFO = 2, HW_WARN = 3, HW_ERROR = 4 };

/* What hw_emit returns besides 0. */
enum { HW_EMIT_UNKNOWN_PORT = -1, HW_EMIT_MALFORMED = -2, HW_EMIT_LIMIT = -3 };

/* What hw_kv_get returns for a missing key; -2 and -3 as for hw_kv_set. */
enum { HW_KV_ABSENT = -1, HW_KV_BAD_POINTER = -2, HW_KV_TOO_LARGE = -3 };

/* The return code of the generated hw_on_message when the input record is malformed. */
#define HW_ERR_MALFORMED_INPUT 2

/* One header: UTF-8 name and value, not NUL-terminated. */
typedef struct hw_header {
    const char *name;
    uint32_t name_len;
    const char *value;
    uint32_t value_len;
} hw_header;

/* A message: the input of on_message, or one to emit. Text is UTF-8 and not
 * NUL-terminated. In an emitted message topic_len 0 means "the input's topic",
 * timestamp_ms 0 "the input's timestamp", header_count 0 "the input's headers". The
 * input's pointers are valid only during the call. */
typedef struct hw_message {
    int64_t timestamp_ms;
    const char *topic;
    uint32_t topic_len;
    const hw_header *headers;
    uint32_t header_count;
    const uint8_t *payload;
    uint32_t payload_len;
} hw_message;

/* ---- host imports (module "hw") ---------------------------------------------- */

#define HW__IMPORT(name) __attribute__((import_module("hw"), import_name(name)))
HW__IMPORT("emit") int32_t hw__host_emit(int32_t port, const void *ptr, int32_t len);
HW__IMPORT("log") void hw__host_log(int32_t level, const void *ptr, int32_t len);
HW__IMPORT("kv_get")
int32_t hw__host_kv_get(const void *key, int32_t key_len, void *buf, int32_t buf_cap);
HW__IMPORT("kv_set")
int32_t hw__host_kv_set(const void *key, int32_t key_len, const void *val, int32_t val_len);
HW__IMPORT("now_ms") int64_t hw__host_now_ms(void);

/* ---- memory: the C library's four functions the compiler may call, and an allocator */

__attribute__((weak)) void *memcpy(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

__attribute__((weak)) void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
    return dst;
}

__attribute__((weak)) void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

__attribute__((weak)) int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y) return *x - *y;
    return 0;
}

/* The allocator: blocks of 2^k bytes (k from 4), an 8-byte header holding k, one free
 * list per k. A block freed is reused by the next request of its size class, so a host
 * that allocates one buffer per message never grows the memory after the first few. */
extern unsigned char __heap_base;
static uintptr_t hw__brk;
static uintptr_t hw__end;
static void *hw__free_lists[32];

static inline uint32_t hw__size_class(uint32_t n) {
    uint32_t k = 4;
    while (k < 31 && ((uint32_t)1 << k) < n) k++;
    return k;
}

/* n bytes, 8-aligned, or NULL when the memory cannot grow. */
static inline void *hw_malloc(uint32_t n) {
    if (n > 0x7ffffff0u - 8) return NULL;
    uint32_t k = hw__size_class(n + 8);
    if (hw__free_lists[k]) {
        unsigned char *block = (unsigned char *)hw__free_lists[k] - 8;
        hw__free_lists[k] = *(void **)(block + 8);
        return block + 8;
    }
    if (hw__brk == 0) {
        hw__brk = ((uintptr_t)&__heap_base + 7) & ~(uintptr_t)7;
        hw__end = (uintptr_t)__builtin_wasm_memory_size(0) * 65536u;
    }
    uintptr_t size = (uintptr_t)1 << k;
    if (hw__end - hw__brk < size) {
        uintptr_t pages = (size - (hw__end - hw__brk) + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return NULL;
        hw__end += pages * 65536u;
    }
    unsigned char *block = (unsigned char *)hw__brk;
    hw__brk += size;
    *(uint32_t *)block = k;
    return block + 8;
}

/* Frees what hw_malloc returned (NULL is ignored). */
static inline void hw_free(void *ptr) {
    if (!ptr) return;
    unsigned char *block = (unsigned char *)ptr - 8;
    uint32_t k = *(uint32_t *)block;
    *(void **)ptr = hw__free_lists[k];
    hw__free_lists[k] = ptr;
}

/* The length of a NUL-terminated string. */
static inline uint32_t hw_strlen(const char *text) {
    uint32_t n = 0;
    while (text[n]) n++;
    return n;
}

/* ---- the message record ------------------------------------------------------ */

/* A message with this payload that keeps the input's topic, timestamp and headers. */
static inline hw_message hw_message_new(const uint8_t *payload, uint32_t payload_len) {
    hw_message msg = {0};
    msg.payload = payload;
    msg.payload_len = payload_len;
    return msg;
}

/* The value of the first header called name (NUL-terminated), or NULL. */
static inline const char *hw_header_get(const hw_message *msg, const char *name,
                                        uint32_t *value_len) {
    uint32_t name_len = hw_strlen(name);
    for (uint32_t i = 0; i < msg->header_count; i++) {
        const hw_header *h = &msg->headers[i];
        if (h->name_len == name_len && memcmp(h->name, name, name_len) == 0) {
            if (value_len) *value_len = h->value_len;
            return h->value;
        }
    }
    return NULL;
}

static inline uint32_t hw__record_len(const hw_message *msg) {
    uint32_t len = 8 + 4 + msg->topic_len + 4 + 4 + msg->payload_len;
    for (uint32_t i = 0; i < msg->header_count; i++)
        len += 8 + msg->headers[i].name_len + msg->headers[i].value_len;
    return len;
}

static inline unsigned char *hw__put(unsigned char *at, const void *bytes, uint32_t len) {
    memcpy(at, &len, 4); /* wasm32 is little-endian, as the record */
    memcpy(at + 4, bytes, len);
    return at + 4 + len;
}

/* Sends msg on output port number port (the index in the node's ports: list; 0 is
 * out). Returns 0, or HW_EMIT_UNKNOWN_PORT, HW_EMIT_MALFORMED, HW_EMIT_LIMIT, or -4
 * when the plugin's memory is full. */
static inline int32_t hw_emit(uint32_t port, const hw_message *msg) {
    uint32_t len = hw__record_len(msg);
    unsigned char *record = hw_malloc(len);
    if (!record) return -4;
    unsigned char *at = record;
    memcpy(at, &msg->timestamp_ms, 8);
    at = hw__put(at + 8, msg->topic, msg->topic_len);
    memcpy(at, &msg->header_count, 4);
    at += 4;
    for (uint32_t i = 0; i < msg->header_count; i++) {
        at = hw__put(at, msg->headers[i].name, msg->headers[i].name_len);
        at = hw__put(at, msg->headers[i].value, msg->headers[i].value_len);
    }
    hw__put(at, msg->payload, msg->payload_len);
    int32_t code = hw__host_emit((int32_t)port, record, (int32_t)len);
    hw_free(record);
    return code;
}

/* ---- logging, state, time ------------------------------------------------------ */

/* Logs len bytes of UTF-8 at a level (HW_TRACE .. HW_ERROR); the host names the node
 * and rate-limits. Do not log per message at HW_INFO. */
static inline void hw_log(int32_t level, const char *text, uint32_t len) {
    hw__host_log(level, text, (int32_t)len);
}

/* Logs a NUL-terminated string. */
static inline void hw_log_str(int32_t level, const char *text) {
    hw_log(level, text, hw_strlen(text));
}

/* This node's persistent state. Copies min(length, cap) bytes of the value of key into
 * buf and returns the value's length (call again with a bigger buffer when it is over
 * cap), or HW_KV_ABSENT. Sees the current call's own earlier writes. */
static inline int32_t hw_kv_get(const char *key, uint32_t key_len, void *buf, uint32_t cap) {
    return hw__host_kv_get(key, (int32_t)key_len, buf, (int32_t)cap);
}

/* Sets key (at most 256 bytes) to a value (at most 64 KiB): 0, HW_KV_BAD_POINTER or
 * HW_KV_TOO_LARGE. The writes of a call are committed together, durably, when it
 * returns 0, and discarded when it fails. */
static inline int32_t hw_kv_set(const char *key, uint32_t key_len, const void *value,
                                uint32_t value_len) {
    if (value_len > 0x7fffffffu) return HW_KV_TOO_LARGE;
    return hw__host_kv_set(key, (int32_t)key_len, value, (int32_t)value_len);
}

/* Deletes key. */
static inline int32_t hw_kv_delete(const char *key, uint32_t key_len) {
    return hw__host_kv_set(key, (int32_t)key_len, NULL, -1);
}

/* The engine's clock, ms since the Unix epoch (virtual in Headwater's tests). */
static inline int64_t hw_now_ms(void) { return hw__host_now_ms(); }

/* ---- JSON: one field by path, and numbers as text ------------------------------ */

typedef struct hw__json {
    const uint8_t *text;
    uint32_t len;
    uint32_t at;
} hw__json;

static inline void hw__json_space(hw__json *j) {
    while (j->at < j->len && (j->text[j->at] == ' ' || j->text[j->at] == '\t' ||
                              j->text[j->at] == '\n' || j->text[j->at] == '\r'))
        j->at++;
}

static inline bool hw__json_string(hw__json *j) {
    if (j->at >= j->len || j->text[j->at] != '"') return false;
    for (j->at++; j->at < j->len; j->at++) {
        uint8_t c = j->text[j->at];
        if (c == '"') {
            j->at++;
            return true;
        }
        if (c == '\\') j->at++;
        else if (c < 0x20) return false;
    }
    return false;
}

/* Skips one value; nesting is bounded so a hostile payload cannot exhaust the stack. */
static bool hw__json_skip(hw__json *j, int depth) {
    if (depth > 64 || j->at >= j->len) return false;
    uint8_t c = j->text[j->at];
    if (c == '"') return hw__json_string(j);
    if (c == '{' || c == '[') {
        uint8_t close = c == '{' ? '}' : ']';
        j->at++;
        hw__json_space(j);
        if (j->at < j->len && j->text[j->at] == close) {
            j->at++;
            return true;
        }
        for (;;) {
            hw__json_space(j);
            if (c == '{') {
                if (!hw__json_string(j)) return false;
                hw__json_space(j);
                if (j->at >= j->len || j->text[j->at] != ':') return false;
                j->at++;
                hw__json_space(j);
            }
            if (!hw__json_skip(j, depth + 1)) return false;
            hw__json_space(j);
            if (j->at >= j->len) return false;
            uint8_t next = j->text[j->at++];
            if (next == close) return true;
            if (next != ',') return false;
        }
    }
    /* A literal or a number: its characters. */
    uint32_t start = j->at;
    while (j->at < j->len) {
        c = j->text[j->at];
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-' || c == '+' ||
            c == '.' || c == 'E')
            j->at++;
        else
            break;
    }
    return j->at > start;
}

/* Finds the value at path (keys separated by dots, "" for the whole document):
 * sets *start and *len to its text. */
static inline bool hw_json_find(const uint8_t *json, uint32_t json_len, const char *path,
                                uint32_t *start, uint32_t *len) {
    hw__json j = {json, json_len, 0};
    hw__json_space(&j);
    while (*path) {
        uint32_t key_len = 0;
        while (path[key_len] && path[key_len] != '.') key_len++;
        if (j.at >= j.len || j.text[j.at] != '{') return false;
        j.at++;
        bool found = false;
        while (!found) {
            hw__json_space(&j);
            uint32_t key_start = j.at + 1;
            if (!hw__json_string(&j)) return false;
            /* Keys are compared as written: escaped keys do not match. */
            found = j.at - 1 - key_start == key_len &&
                    memcmp(j.text + key_start, path, key_len) == 0;
            hw__json_space(&j);
            if (j.at >= j.len || j.text[j.at] != ':') return false;
            j.at++;
            hw__json_space(&j);
            if (found) break;
            if (!hw__json_skip(&j, 1)) return false;
            hw__json_space(&j);
            if (j.at >= j.len || j.text[j.at] != ',') return false;
            j.at++;
        }
        path += key_len;
        if (*path == '.') path++;
    }
    uint32_t value_start = j.at;
    if (!hw__json_skip(&j, 0)) return false;
    *start = value_start;
    *len = j.at - value_start;
    return true;
}

/* Reads a JSON number; false when the text is not exactly one. */
static inline bool hw_json_parse_number(const uint8_t *text, uint32_t len, double *out) {
    uint32_t i = 0;
    bool negative = i < len && text[i] == '-';
    if (negative) i++;
    uint64_t mantissa = 0;
    int32_t exponent = 0, digits = 0, int_digits = 0;
    if (i < len && text[i] == '0' && i + 1 < len && text[i + 1] >= '0' && text[i + 1] <= '9')
        return false;
    for (; i < len && text[i] >= '0' && text[i] <= '9'; i++, int_digits++) {
        if (digits < 19) {
            mantissa = mantissa * 10 + (text[i] - '0');
            if (mantissa) digits++;
        } else {
            exponent++;
        }
    }
    if (int_digits == 0) return false;
    if (i < len && text[i] == '.') {
        uint32_t frac_start = ++i;
        for (; i < len && text[i] >= '0' && text[i] <= '9'; i++) {
            if (digits < 19) {
                mantissa = mantissa * 10 + (text[i] - '0');
                exponent--;
                if (mantissa) digits++;
            }
        }
        if (i == frac_start) return false;
    }
    if (i < len && (text[i] == 'e' || text[i] == 'E')) {
        i++;
        bool exp_negative = i < len && text[i] == '-';
        if (i < len && (text[i] == '-' || text[i] == '+')) i++;
        uint32_t exp_start = i;
        int32_t e = 0;
        for (; i < len && text[i] >= '0' && text[i] <= '9'; i++)
            if (e < 10000) e = e * 10 + (text[i] - '0');
        if (i == exp_start) return false;
        exponent += exp_negative ? -e : e;
    }
    if (i != len) return false;
    /* Exact powers of ten up to 1e22 keep common readings exact (72.5, 0.1). */
    double value = (double)mantissa;
    double scale = 1.0;
    int32_t e = exponent < 0 ? -exponent : exponent;
    for (; e > 0 && scale < 1e300; e--) scale *= 10.0;
    if (e > 0 && exponent < 0) value = 0.0;
    else if (exponent < 0) value /= scale;
    else value *= scale;
    *out = negative ? -value : value;
    return true;
}

/* The number at path. */
static inline bool hw_json_number(const uint8_t *json, uint32_t json_len, const char *path,
                                  double *out) {
    uint32_t start, len;
    return hw_json_find(json, json_len, path, &start, &len) &&
           hw_json_parse_number(json + start, len, out);
}

/* The string at path, as written between the quotes (escapes not resolved). */
static inline bool hw_json_string(const uint8_t *json, uint32_t json_len, const char *path,
                                  const char **text, uint32_t *text_len) {
    uint32_t start, len;
    if (!hw_json_find(json, json_len, path, &start, &len) || json[start] != '"') return false;
    *text = (const char *)json + start + 1;
    *text_len = len - 2;
    return true;
}

/* The boolean at path. */
static inline bool hw_json_bool(const uint8_t *json, uint32_t json_len, const char *path,
                                bool *out) {
    uint32_t start, len;
    if (!hw_json_find(json, json_len, path, &start, &len)) return false;
    if (len == 4 && memcmp(json + start, "true", 4) == 0) *out = true;
    else if (len == 5 && memcmp(json + start, "false", 5) == 0) *out = false;
    else return false;
    return true;
}

/* Writes value as JSON text with at most `decimals` places (trailing zeros dropped) into
 * buf and returns the length, or 0 when cap is too small. NaN, the infinities and values
 * beyond 1e18 are written as null. */
static inline uint32_t hw_fmt_double(char *buf, uint32_t cap, double value, int decimals) {
    char tmp[48];
    uint32_t n = 0;
    if (decimals < 0) decimals = 0;
    if (decimals > 9) decimals = 9;
    uint64_t scale = 1;
    for (int i = 0; i < decimals; i++) scale *= 10;
    double magnitude = value < 0 ? -value : value;
    if (!(magnitude <= 1e18)) { /* also NaN */
        if (cap < 4) return 0;
        memcpy(buf, "null", 4);
        return 4;
    }
    double scaled_f = magnitude * (double)scale + 0.5;
    if (scaled_f >= 1.8e19) { /* too many decimals for the size: fewer */
        scale = 1;
        decimals = 0;
        scaled_f = magnitude + 0.5;
    }
    uint64_t scaled = (uint64_t)scaled_f;
    uint64_t whole = scaled / scale, frac = scaled % scale;
    if (value < 0 && scaled != 0) tmp[n++] = '-';
    char digits[24];
    int d = 0;
    do {
        digits[d++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    while (d) tmp[n++] = digits[--d];
    if (decimals > 0 && frac != 0) {
        tmp[n++] = '.';
        for (int i = decimals - 1; i >= 0; i--) {
            uint64_t div = 1;
            for (int k = 0; k < i; k++) div *= 10;
            tmp[n++] = (char)('0' + (frac / div) % 10);
        }
        while (tmp[n - 1] == '0') n--;
    }
    if (n > cap) return 0;
    memcpy(buf, tmp, n);
    return n;
}

/* ---- the exports -------------------------------------------------------------- */

static inline int32_t hw__dispatch(const uint8_t *record, uint32_t len,
                                   int32_t (*on_message)(const hw_message *)) {
    hw_message msg = {0};
    hw_header *headers = NULL;
    uint32_t at = 0;
    uint32_t field;
#define HW__NEED(n) \
    if (len - at < (uint32_t)(n)) goto malformed
#define HW__U32(dst) \
    HW__NEED(4);      \
    memcpy(&(dst), record + at, 4); \
    at += 4
    HW__NEED(8);
    memcpy(&msg.timestamp_ms, record, 8);
    at = 8;
    HW__U32(field);
    HW__NEED(field);
    msg.topic = (const char *)record + at;
    msg.topic_len = field;
    at += field;
    HW__U32(msg.header_count);
    /* Each header takes at least 8 bytes: a larger count is a lie, not an allocation. */
    if (msg.header_count > (len - at) / 8) goto malformed;
    if (msg.header_count) {
        headers = hw_malloc(msg.header_count * (uint32_t)sizeof(hw_header));
        if (!headers) return 3;
    }
    for (uint32_t i = 0; i < msg.header_count; i++) {
        HW__U32(field);
        HW__NEED(field);
        headers[i].name = (const char *)record + at;
        headers[i].name_len = field;
        at += field;
        HW__U32(field);
        HW__NEED(field);
        headers[i].value = (const char *)record + at;
        headers[i].value_len = field;
        at += field;
    }
    msg.headers = headers;
    HW__U32(field);
    HW__NEED(field);
    msg.payload = record + at;
    msg.payload_len = field;
    at += field;
    if (at != len) goto malformed;
    int32_t code = on_message(&msg);
    hw_free(headers);
    return code;
malformed:
    hw_free(headers);
    hw_log_str(HW_WARN, "cannot read the input: malformed message record");
    return HW_ERR_MALFORMED_INPUT;
#undef HW__NEED
#undef HW__U32
}

/* HW_PLUGIN(on_message): the exports of a plugin without init.
 *   int32_t on_message(const hw_message *msg);  0 = handled (its emits are the output;
 *   none drops the message), anything else fails the message (error port; the call's
 *   emits and key/value writes are discarded). */
#define HW_PLUGIN(on_message)                                                           \
    __attribute__((export_name("hw_abi_version"))) int32_t hw__export_abi_version(void) { \
        return HW_ABI_VERSION;                                                          \
    }                                                                                   \
    __attribute__((export_name("hw_alloc"))) int32_t hw__export_alloc(int32_t len) {    \
        return len < 0 ? 0 : (int32_t)(uintptr_t)hw_malloc((uint32_t)len);             \
    }                                                                                   \
    __attribute__((export_name("hw_dealloc"))) void hw__export_dealloc(int32_t ptr,     \
                                                                        int32_t len) {  \
        (void)len;                                                                      \
        hw_free((void *)(uintptr_t)ptr);                                                \
    }                                                                                   \
    __attribute__((export_name("hw_on_message"))) int32_t hw__export_on_message(        \
        int32_t ptr, int32_t len) {                                                     \
        return hw__dispatch((const uint8_t *)(uintptr_t)ptr, (uint32_t)len, on_message); \
    }

/* HW_PLUGIN_WITH_INIT(init, on_message): as HW_PLUGIN, plus
 *   int32_t init(const uint8_t *config_json, uint32_t len);  called once before any
 *   message with the node's config: as JSON (null when absent); non-zero stops the node
 *   from starting (log why first). */
#define HW_PLUGIN_WITH_INIT(init, on_message)                                           \
    HW_PLUGIN(on_message)                                                               \
    __attribute__((export_name("hw_init"))) int32_t hw__export_init(int32_t ptr,        \
                                                                     int32_t len) {     \
        return init((const uint8_t *)(uintptr_t)ptr, (uint32_t)len);                    \
    }

#endif /* HEADWATER_PLUGIN_H */
