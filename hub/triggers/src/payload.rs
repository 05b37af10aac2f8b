//! Message bodies as event data.

use base64::Engine as _;
use serde_json::Value;

/// A body as event data: parsed JSON when it parses, else UTF-8 text, else base64 (standard
/// alphabet, padded); with the encoding used (`json`, `text`, `base64`) for `event.meta`.
pub fn decode_payload(payload: &[u8]) -> (Value, &'static str) {
    if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        return (value, "json");
    }
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::String(text.to_string()), "text"),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
            "base64",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_text_or_base64() {
        assert_eq!(decode_payload(br#"{"a":1}"#), (json!({"a": 1}), "json"));
        assert_eq!(decode_payload(b"hello"), (json!("hello"), "text"));
        assert_eq!(decode_payload(&[0xff, 0xfe]), (json!("//4="), "base64"));
    }
}
