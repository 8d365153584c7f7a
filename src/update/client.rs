//! The pusher's side: send a signed bank to a device, ask a device for its status.

use std::time::Duration;

use anyhow::{Context, Result};

/// A device's answer: HTTP status and its JSON body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

fn answer(result: Result<ureq::Response, ureq::Error>, device: &str) -> Result<Answer> {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => return Err(e).with_context(|| format!("cannot reach {device}")),
    };
    let status = response.status();
    let body = response
        .into_string()
        .with_context(|| format!("{device}: unreadable answer"))?;
    Ok(Answer { status, body })
}

/// Sends a signed update (`ucad sign`'s output) to `device` (HOST:PORT).
pub fn push(device: &str, envelope: &[u8]) -> Result<Answer> {
    answer(
        agent().post(&format!("http://{device}/bank")).send_bytes(envelope),
        device,
    )
}

pub fn status(device: &str) -> Result<Answer> {
    answer(agent().get(&format!("http://{device}/status")).call(), device)
}
