;; A minimal guest written by hand in WebAssembly text, for attacks a Rust
;; guest cannot express (growing a table, declaring many memories). The test
;; support turns it into a `plugin` component with wit-component, after
;; filling in the two placeholders:
;;   @FIELDS@  extra module fields (memories, tables)
;;   @AUTHORIZE@  instructions run at the start of `authorize`
;; Every export answers like a permissive policy: authenticate -> "{}",
;; authorize/hooks -> ok, select -> "{}".
(module
  (memory (export "memory") 1)
  (table $funcs 1 funcref)
  @FIELDS@
  (global $heap (mut i32) (i32.const 4096))

  ;; "{}" at 16; result<string, _> ok at 64: tag 0, ptr 16, len 2.
  (data (i32.const 16) "{}")
  (data (i32.const 64) "\00\00\00\00\10\00\00\00\02\00\00\00")
  ;; result<_, string> ok at 128: tag 0.
  (data (i32.const 128) "\00\00\00\00\00\00\00\00\00\00\00\00")

  ;; Bump allocator for what the host passes in; never frees.
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $at i32)
    (local.set $at
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.xor (i32.sub (local.get $align) (i32.const 1)) (i32.const -1))))
    (global.set $heap (i32.add (local.get $at) (local.get $size)))
    (block $fits
      (loop $grow
        (br_if $fits (i32.le_u (global.get $heap) (i32.shl (memory.size) (i32.const 16))))
        (drop (memory.grow (i32.const 1)))
        (br $grow)))
    (local.get $at))

  (func (export "presence:plugin/guest@0.1.1#authenticate")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (i32.const 64))
  (func (export "presence:plugin/guest@0.1.1#authorize")
    (param i64 i32 i32 i32 i32 i32) (result i32)
    @AUTHORIZE@
    (i32.const 128))
  (func (export "presence:plugin/guest@0.1.1#select") (param i32 i32) (result i32)
    (i32.const 64))
  (func (export "presence:plugin/guest@0.1.1#on-subscribe") (param i64 i32 i32 i32 i32) (result i32)
    (i32.const 128))
  (func (export "presence:plugin/guest@0.1.1#on-unsubscribe") (param i64 i32 i32 i32 i32) (result i32)
    (i32.const 128))
  (func (export "presence:plugin/guest@0.1.1#on-close") (param i64 i32 i32) (result i32)
    (i32.const 128))
)
