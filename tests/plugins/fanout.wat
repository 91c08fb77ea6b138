;; One-to-many and drop: a message whose topic starts with "d" is dropped (no emit);
;; any other is emitted unchanged on port 0 and, on port 1, as a new record with topic
;; "alert", payload "hi" and the timestamp now_ms() (the engine's clock).
(module
  (import "hw" "emit" (func $emit (param i32 i32 i32) (result i32)))
  (import "hw" "now_ms" (func $now (result i64)))
  (memory (export "memory") 1)
  ;; The alert record at 64: i64 timestamp, u32 5 "alert", u32 0 headers, u32 2 "hi".
  (data (i32.const 72) "\05\00\00\00alert\00\00\00\00\02\00\00\00hi")
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
  (func (export "hw_on_message") (param $ptr i32) (param $len i32) (result i32)
    ;; topic_len at ptr+8, topic at ptr+12
    (if (i32.and
          (i32.gt_u (i32.load (i32.add (local.get $ptr) (i32.const 8))) (i32.const 0))
          (i32.eq (i32.load8_u (i32.add (local.get $ptr) (i32.const 12))) (i32.const 100)))
      (then (return (i32.const 0))))
    (drop (call $emit (i32.const 0) (local.get $ptr) (local.get $len)))
    (i64.store (i32.const 64) (call $now))
    (drop (call $emit (i32.const 1) (i32.const 64) (i32.const 27)))
    (i32.const 0)))
