//! Outgoing frames: one shared text per broadcast, and assembling a big one
//! (a topic's whole member list) with a single copy of its bytes.

use std::mem::MaybeUninit;
use std::sync::Arc;

/// One outgoing text frame, shared by every receiver of a broadcast.
pub type Frame = Arc<str>;

/// `parts` concatenated into one frame, copying each byte once. Building a
/// `String` and converting it would copy a 10,000-member list twice per
/// joiner: the conversion moves the bytes behind the `Arc`'s counters.
pub(super) fn joined(parts: &[&str]) -> Frame {
    let len = parts.iter().map(|part| part.len()).sum();
    let mut bytes: Arc<[MaybeUninit<u8>]> = Arc::new_uninit_slice(len);
    let slots = Arc::get_mut(&mut bytes).expect("a new Arc has no other owner");
    let mut at = 0;
    for part in parts {
        slots[at..at + part.len()].write_copy_of_slice(part.as_bytes());
        at += part.len();
    }
    debug_assert_eq!(at, len);
    // SAFETY: the loop wrote all `len` bytes.
    let bytes: Arc<[u8]> = unsafe { bytes.assume_init() };
    // SAFETY: the bytes are `&str`s laid end to end, so valid UTF-8, and
    // `Arc<[u8]>` and `Arc<str>` share one layout (as `Arc<str>::from` uses).
    unsafe { Arc::from_raw(Arc::into_raw(bytes) as *const str) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_joined_in_order_with_multibyte_text_intact() {
        assert_eq!(&*joined(&["{\"a\":", "\"é😀\"", "", "}"]), "{\"a\":\"é😀\"}");
        assert_eq!(&*joined(&[]), "");
        let big = "x".repeat(300_000);
        assert_eq!(joined(&["[", &big, "]"]).len(), 300_002);
    }
}
