//! A minimal Server-Sent Events reader for tests.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

/// An open SSE response.
#[derive(Debug)]
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

/// One event: its name and JSON data.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: Value,
}

impl SseReader {
    /// Opens `url` with `token`; panics unless it answers 200 `text/event-stream`.
    pub async fn open(url: &str, token: &str) -> SseReader {
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` after `within` or at the end.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_string();
                    } else if let Some(text) = line.strip_prefix("data:") {
                        data.push_str(text.strip_prefix(' ').unwrap_or(text));
                    }
                }
                if !data.is_empty() {
                    return Some(SseEvent {
                        event,
                        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                    });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until one named `name` for which `pick` holds (returned), within `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&SseEvent) -> bool,
    ) -> (Vec<SseEvent>, Option<SseEvent>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) if pick(&event) => return (seen, Some(event)),
                Some(event) => seen.push(event),
                None => return (seen, None),
            }
        }
    }
}
