;; Calls env.abort as AssemblyScript does: UTF-16 strings with their byte length at ptr-4.
(module
  (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  ;; "boom" at 20 (length 8 at 16), "a.ts" at 36 (length 8 at 32)
  (data (i32.const 16) "\08\00\00\00b\00o\00o\00m\00")
  (data (i32.const 32) "\08\00\00\00a\00.\00t\00s\00")
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
  (func (export "hw_on_message") (param i32 i32) (result i32)
    (call $abort (i32.const 20) (i32.const 36) (i32.const 3) (i32.const 7))
    (i32.const 0)))
