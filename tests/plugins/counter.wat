;; Persistent state: counts messages under the key "count" (decimal text) and emits
;; the new count as the payload. hw_init stores its config JSON under "config". A
;; message whose topic starts with "f" sets the count anyway and returns 1, so its
;; write must be discarded.
(module
  (import "hw" "emit" (func $emit (param i32 i32 i32) (result i32)))
  (import "hw" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "hw" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "count")
  (data (i32.const 24) "config")
  ;; One input buffer at $buf, grown to fit: the host frees it after every call.
  (global $buf i32 (i32.const 4096))
  (func (export "hw_alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.shr_u (i32.add (i32.add (global.get $buf) (local.get $len)) (i32.const 65535))
                 (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $need) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.get $buf))
  (func (export "hw_dealloc") (param i32 i32))
  (func (export "hw_abi_version") (result i32) (i32.const 1))
  (func (export "hw_init") (param $ptr i32) (param $len i32) (result i32)
    (drop (call $kv_set (i32.const 24) (i32.const 6) (local.get $ptr) (local.get $len)))
    (i32.const 0))
  ;; Parses the decimal text at 256 of length $n.
  (func $parse (param $n i32) (result i64)
    (local $i i32) (local $v i64)
    (block $done
      (loop $digit
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10))
          (i64.extend_i32_u (i32.sub (i32.load8_u (i32.add (i32.const 256) (local.get $i))) (i32.const 48)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $digit)))
    (local.get $v))
  ;; Writes $v as decimal text ending at 400; returns its start.
  (func $format (param $v i64) (result i32)
    (local $at i32)
    (local.set $at (i32.const 400))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (local.get $at))
  (func (export "hw_on_message") (param $ptr i32) (param $len i32) (result i32)
    (local $n i32) (local $count i64) (local $text i32) (local $text_len i32)
    (local.set $n (call $kv_get (i32.const 16) (i32.const 5) (i32.const 256) (i32.const 32)))
    (if (i32.ge_s (local.get $n) (i32.const 0))
      (then (local.set $count (call $parse (local.get $n)))))
    (local.set $count (i64.add (local.get $count) (i64.const 1)))
    (local.set $text (call $format (local.get $count)))
    (local.set $text_len (i32.sub (i32.const 400) (local.get $text)))
    (drop (call $kv_set (i32.const 16) (i32.const 5) (local.get $text) (local.get $text_len)))
    (if (i32.and
          (i32.gt_u (i32.load (i32.add (local.get $ptr) (i32.const 8))) (i32.const 0))
          (i32.eq (i32.load8_u (i32.add (local.get $ptr) (i32.const 12))) (i32.const 102)))
      (then (return (i32.const 1))))
    ;; The record at 512: timestamp 0, topic "" , no headers, the count as payload.
    (i64.store (i32.const 512) (i64.const 0))
    (i32.store (i32.const 520) (i32.const 0))
    (i32.store (i32.const 524) (i32.const 0))
    (i32.store (i32.const 528) (local.get $text_len))
    (memory.copy (i32.const 532) (local.get $text) (local.get $text_len))
    (drop (call $emit (i32.const 0) (i32.const 512) (i32.add (i32.const 20) (local.get $text_len))))
    (i32.const 0)))
