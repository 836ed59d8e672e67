//! Outgoing frames: text built once and shared by every receiver (a
//! broadcast, or one topic's state sent to many joiners), and handed to the
//! WebSocket without another copy — a frame is the very buffer axum writes.

use axum::extract::ws::Utf8Bytes;

/// One outgoing text frame, shared by every receiver: cloning it is cheap
/// (a reference count), whatever its size.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The frame as axum's WebSocket text (no copy).
    pub fn into_text(self) -> Utf8Bytes {
        self.0
    }
}

impl std::ops::Deref for Frame {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<String> for Frame {
    /// Takes the string's buffer as it is.
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Self {
        Self(text.into())
    }
}

impl From<Frame> for Utf8Bytes {
    fn from(frame: Frame) -> Self {
        frame.0
    }
}

/// `parts` concatenated into one frame, each byte copied once (the string
/// built here becomes the frame's buffer).
pub(super) fn joined(parts: &[&str]) -> Frame {
    let mut text = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        text.push_str(part);
    }
    text.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_joined_in_order_with_multibyte_text_intact() {
        assert_eq!(&*joined(&["{\"a\":", "\"é😀\"", "", "}"]), "{\"a\":\"é😀\"}");
        assert_eq!(&*joined(&[]), "");
        let big = "x".repeat(300_000);
        let frame = joined(&["[", &big, "]"]);
        assert_eq!(frame.len(), 300_002);
        // A clone shares the buffer.
        assert_eq!(frame.clone().as_str().as_ptr(), frame.as_str().as_ptr());
    }
}
