;; Tries to emit 100 MiB: one well-formed 1 MiB record, 100 times.
(module
  (import "hw" "emit" (func $emit (param i32 i32 i32) (result i32)))
  (memory (export "memory") 18)
  ;; One input buffer at $buf, grown to fit: the host frees it after every call.
  (global $buf i32 (i32.const 1114112))
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
  (func (export "hw_on_message") (param i32 i32) (result i32)
    (local $i i32)
    ;; timestamp 0, topic "", no headers, payload of 1 MiB - 20 bytes (zeros)
    (i64.store (i32.const 0) (i64.const 0))
    (i32.store (i32.const 8) (i32.const 0))
    (i32.store (i32.const 12) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1048556))
    (loop $again
      (drop (call $emit (i32.const 0) (i32.const 0) (i32.const 1048576)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 100))))
    (i32.const 0)))
