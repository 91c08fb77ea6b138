;; Grows its memory one page at a time without end, ignoring failures.
(module
  (memory (export "memory") 1)
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
    (loop $more
      (drop (memory.grow (i32.const 1)))
      (br $more))
    (i32.const 0)))
