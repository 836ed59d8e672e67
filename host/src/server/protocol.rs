//! The svelte-adapter-uws client protocol: what a browser sends
//! (`{"type":"subscribe"|"unsubscribe","topic":…}`) and the error envelope a
//! server sends back for a frame it will not act on.

use crate::engine::Envelope;
use serde::Deserialize;
use serde_json::json;

/// A client → server message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    Subscribe { topic: String },
    Unsubscribe { topic: String },
}

/// Why a frame was refused; the code is machine-readable, the message is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub topic: Option<String>,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, topic: Option<&str>, message: impl Into<String>) -> Self {
        Self { code, topic: topic.map(str::to_owned), message: message.into() }
    }

    /// `{"topic":<topic or "__error">,"event":"error","data":{"code","message"}}`
    pub fn envelope(&self) -> Envelope {
        let data = json!({ "code": self.code, "message": self.message }).to_string();
        let topic = self.topic.clone().unwrap_or_else(|| "__error".into());
        Envelope::new(topic, "error", serde_json::value::RawValue::from_string(data).expect("valid JSON"))
    }
}

/// Parse and check one text frame.
pub fn parse(text: &str, max_topic_bytes: usize) -> Result<ClientMessage, Refusal> {
    let message: ClientMessage = serde_json::from_str(text).map_err(|e| {
        Refusal::new(
            "bad-request",
            None,
            format!("expected {{\"type\":\"subscribe\"|\"unsubscribe\",\"topic\":\"…\"}}: {e}"),
        )
    })?;
    let (ClientMessage::Subscribe { topic } | ClientMessage::Unsubscribe { topic }) = &message;
    if topic.is_empty() {
        return Err(Refusal::new("bad-request", None, "topic is empty"));
    }
    if topic.len() > max_topic_bytes {
        return Err(Refusal::new("bad-request", None, format!("topic is longer than {max_topic_bytes} bytes")));
    }
    if topic.chars().any(char::is_control) {
        return Err(Refusal::new("bad-request", None, "topic contains control characters"));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_messages_and_refuses_the_rest() {
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"room"}"#, 64),
            Ok(ClientMessage::Subscribe { topic: "room".into() })
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","topic":"__presence:a|b"}"#, 64),
            Ok(ClientMessage::Unsubscribe { topic: "__presence:a|b".into() })
        );
        for bad in [
            "not json",
            r#"{"type":"publish","topic":"x"}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","topic":""}"#,
            r#"{"type":"subscribe","topic":"a\u0000b"}"#,
            r#"{"type":"subscribe","topic":7}"#,
            r#"[1,2,3]"#,
        ] {
            assert_eq!(parse(bad, 64).unwrap_err().code, "bad-request", "{bad}");
        }
        assert!(parse(&format!(r#"{{"type":"subscribe","topic":"{}"}}"#, "x".repeat(65)), 64).is_err());
    }
}
