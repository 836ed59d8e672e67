//! The svelte-adapter-uws client protocol, every generation in use: what a
//! client sends, the acknowledgements and control frames a server sends back,
//! the machine words of a denial, and the error envelope legacy clients get.
//!
//! A connection whose first frame is `hello` is *current* (0.5); any other is
//! *legacy* (0.3/0.4). Unknown frame types and unknown fields are tolerated:
//! a current client's are ignored (and counted), a legacy client's unknown
//! types get the error envelope they always got.

use crate::engine::Envelope;
use serde::Deserialize;
use serde_json::{json, Value};

/// Most topics one `subscribe-batch` may carry; the rest are ignored.
pub const MAX_BATCH_TOPICS: usize = 256;

/// A client → server message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    /// First frame of a current client.
    Hello {
        #[serde(default)]
        caps: Vec<String>,
    },
    Subscribe {
        topic: String,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    SubscribeBatch {
        topics: Vec<String>,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Unsubscribe {
        topic: String,
    },
    /// After a reconnect: always answered `{"type":"resumed"}`.
    Resume {},
    /// An answer to a server `request`; nothing to do.
    Reply {},
    /// Ask for the topic's presence again (sent by presence stores on open).
    PresenceSnapshot {
        topic: String,
    },
    #[serde(other)]
    Unknown,
}

/// Why a subscription was denied, as the machine word a current client
/// stores in its `denials` (or a policy's own word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenialReason {
    Unauthenticated,
    Forbidden,
    InvalidTopic,
    RateLimited,
    InternalError,
    /// A policy's own word (`authorize` returned an upper-case word).
    Policy(String),
}

impl DenialReason {
    pub fn word(&self) -> &str {
        match self {
            DenialReason::Unauthenticated => "UNAUTHENTICATED",
            DenialReason::Forbidden => "FORBIDDEN",
            DenialReason::InvalidTopic => "INVALID_TOPIC",
            DenialReason::RateLimited => "RATE_LIMITED",
            DenialReason::InternalError => "INTERNAL_ERROR",
            DenialReason::Policy(word) => word,
        }
    }

    /// A policy's refusal text: an upper-case word (`A`–`Z`, `0`–`9`, `_`,
    /// at most 64 bytes) reaches the client as it is, anything else as
    /// `FORBIDDEN` (the text is logged and sent to legacy clients).
    pub fn from_policy(reason: &str) -> Self {
        let word = !reason.is_empty()
            && reason.len() <= 64
            && reason.starts_with(|c: char| c.is_ascii_uppercase())
            && reason.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        match reason {
            "UNAUTHENTICATED" => DenialReason::Unauthenticated,
            "FORBIDDEN" => DenialReason::Forbidden,
            _ if word => DenialReason::Policy(reason.to_owned()),
            _ => DenialReason::Forbidden,
        }
    }
}

/// Why a frame was not acted on: the reason for current clients, a code and
/// message for legacy ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DenialReason,
    pub code: &'static str,
    pub topic: Option<String>,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: DenialReason, code: &'static str, topic: Option<&str>, message: impl Into<String>) -> Self {
        Self { reason, code, topic: topic.map(str::to_owned), message: message.into() }
    }

    /// `{"topic":<topic or "__error">,"event":"error","data":{"code","message"}}`
    pub fn envelope(&self) -> Envelope {
        let data = json!({ "code": self.code, "message": self.message }).to_string();
        let topic = self.topic.clone().unwrap_or_else(|| "__error".into());
        Envelope::new(topic, "error", serde_json::value::RawValue::from_string(data).expect("valid JSON"))
    }
}

/// `{"type":"subscribed","topic":…,"ref":…}`
pub fn subscribed(topic: &str, reference: &Value) -> String {
    json!({"type": "subscribed", "topic": topic, "ref": reference}).to_string()
}

/// `{"type":"subscribe-denied","topic":…,"ref":…,"reason":…}`
pub fn subscribe_denied(topic: &str, reference: &Value, reason: &DenialReason) -> String {
    json!({"type": "subscribe-denied", "topic": topic, "ref": reference, "reason": reason.word()}).to_string()
}

/// `{"type":"welcome","sessionId":…}`, once after the upgrade.
pub fn welcome(session: &str) -> String {
    json!({"type": "welcome", "sessionId": session}).to_string()
}

pub const RESUMED: &str = r#"{"type":"resumed"}"#;

/// An application frame clients ignore, so a quiet connection still hears
/// from the server (current clients give up after 150 s of silence).
pub const KEEPALIVE: &str = r#"{"type":"ping"}"#;

/// Longest `ref` string echoed back (a client's refs are counters; a long
/// one would be copied into every ack of a batch).
pub const MAX_REF_BYTES: usize = 64;

/// Parse one text frame.
pub fn parse(text: &str) -> Result<ClientMessage, Refusal> {
    let message: ClientMessage = serde_json::from_str(text).map_err(|e| {
        Refusal::new(
            DenialReason::InvalidTopic,
            "bad-request",
            None,
            format!("expected {{\"type\":\"subscribe\"|\"unsubscribe\",\"topic\":\"…\"}}: {e}"),
        )
    })?;
    let reference = match &message {
        ClientMessage::Subscribe { reference, .. } | ClientMessage::SubscribeBatch { reference, .. } => reference,
        _ => &None,
    };
    let echoable = match reference {
        None | Some(Value::Number(_)) => true,
        Some(Value::String(text)) => text.len() <= MAX_REF_BYTES,
        Some(_) => false,
    };
    if !echoable {
        let message = format!("`ref` must be a number or a string of at most {MAX_REF_BYTES} bytes");
        return Err(Refusal::new(DenialReason::InvalidTopic, "bad-request", None, message));
    }
    Ok(message)
}

/// Check a topic a client wants to subscribe to.
pub fn check_topic(topic: &str, max_topic_bytes: usize) -> Result<(), Refusal> {
    let invalid = |message: String| Err(Refusal::new(DenialReason::InvalidTopic, "bad-request", None, message));
    if topic.is_empty() {
        return invalid("topic is empty".into());
    }
    if topic.len() > max_topic_bytes {
        return invalid(format!("topic is longer than {max_topic_bytes} bytes"));
    }
    if topic.chars().any(char::is_control) {
        return invalid("topic contains control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_generation_and_tolerates_the_unknown() {
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"room"}"#),
            Ok(ClientMessage::Subscribe { topic: "room".into(), reference: None })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"room","ref":7,"extra":true}"#),
            Ok(ClientMessage::Subscribe { topic: "room".into(), reference: Some(json!(7)) })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe-batch","topics":["a","b"],"ref":"x"}"#),
            Ok(ClientMessage::SubscribeBatch { topics: vec!["a".into(), "b".into()], reference: Some(json!("x")) })
        );
        assert_eq!(
            parse(r#"{"type":"hello","caps":["batch"]}"#),
            Ok(ClientMessage::Hello { caps: vec!["batch".into()] })
        );
        assert_eq!(parse(r#"{"type":"resume","sessionId":"s","lastSeenSeqs":{"a":3}}"#), Ok(ClientMessage::Resume {}));
        assert_eq!(parse(r#"{"type":"reply","ref":1,"data":2}"#), Ok(ClientMessage::Reply {}));
        assert_eq!(parse(r#"{"type":"publish","topic":"x"}"#), Ok(ClientMessage::Unknown));
        let long_ref = json!({"type": "subscribe-batch", "topics": ["a"], "ref": "r".repeat(65)}).to_string();
        let object_ref = r#"{"type":"subscribe","topic":"a","ref":{"big":[1,2,3]}}"#;
        for bad in ["not json", r#"{"type":"subscribe"}"#, r#"{"type":"subscribe","topic":7}"#, "[1,2,3]", object_ref] {
            assert_eq!(parse(bad).unwrap_err().code, "bad-request", "{bad}");
        }
        assert!(parse(&long_ref).unwrap_err().message.contains("ref"));
        assert!(check_topic("", 64).is_err());
        assert!(check_topic("a\u{0}b", 64).is_err());
        assert!(check_topic(&"x".repeat(65), 64).is_err());
        assert!(check_topic("a|b", 64).is_ok());
    }

    #[test]
    fn policy_words_reach_the_client_and_prose_does_not() {
        assert_eq!(DenialReason::from_policy("ROOM_FULL").word(), "ROOM_FULL");
        assert_eq!(DenialReason::from_policy("UNAUTHENTICATED"), DenialReason::Unauthenticated);
        assert_eq!(DenialReason::from_policy("you may not enter").word(), "FORBIDDEN");
        assert_eq!(DenialReason::from_policy("").word(), "FORBIDDEN");
    }
}
