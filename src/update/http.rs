//! The little HTTP/1.1 the update listener speaks: one request per connection, a bounded head,
//! a body only with `Content-Length` and never beyond a limit, a deadline for the whole request.
//!
//! Written here rather than taken from a server crate because of what a device on a shared line
//! network must survive: tiny_http 0.12, for one, drains an oversized body into a buffer of the
//! announced length (one request with `Content-Length: 10^12` aborts the process) and has no
//! read deadline.

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use super::listener::Refusal;

/// Request line and headers together.
const MAX_HEAD: usize = 16 << 10;
/// The whole request must arrive within this.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

fn bad(status: u16, message: &str) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

/// Reads one request. A body over `max_body` is refused (413) after discarding it, up to twice
/// `max_body` bytes, so that an honest client still reads the answer while a hostile length
/// costs nothing. Never panics, whatever the bytes.
pub fn read_request(input: &mut impl BufRead, max_body: usize, deadline: Instant) -> Result<HttpRequest, Refusal> {
    let mut head = Vec::new();
    let mut lines = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(bad(408, "the request took too long"));
        }
        let start = head.len();
        let read = input
            .take((MAX_HEAD + 1 - head.len()) as u64)
            .read_until(b'\n', &mut head)
            .map_err(|e| bad(400, &format!("cannot read the request: {e}")))?;
        if head.len() > MAX_HEAD {
            return Err(bad(431, "request head too large"));
        }
        if read == 0 {
            return Err(bad(400, "the request ended inside its head"));
        }
        let line = String::from_utf8_lossy(&head[start..]).trim_end().to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let mut request_line = lines
        .first()
        .map(|l| l.split(' '))
        .ok_or_else(|| bad(400, "no request line"))?;
    let (Some(method), Some(path), Some(version)) = (request_line.next(), request_line.next(), request_line.next())
    else {
        return Err(bad(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(505, "only HTTP/1.x is spoken here"));
    }
    let mut length = 0usize;
    for header in &lines[1..] {
        let (name, value) = header.split_once(':').ok_or_else(|| bad(400, "malformed header"))?;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(411, "send the body with a Content-Length"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().map_err(|_| bad(400, "bad Content-Length"))?;
        }
    }
    if length > max_body {
        discard(input, length.min(max_body.saturating_mul(2)), deadline);
        return Err(bad(413, &format!("{length} bytes, at most {max_body} accepted")));
    }
    let mut body = vec![0; length];
    let mut filled = 0;
    while filled < length {
        if Instant::now() > deadline {
            return Err(bad(408, "the request took too long"));
        }
        match input.read(&mut body[filled..]) {
            Ok(0) => return Err(bad(400, "the request ended inside its body")),
            Ok(n) => filled += n,
            Err(e) => return Err(bad(400, &format!("cannot read the body: {e}"))),
        }
    }
    Ok(HttpRequest {
        method: method.to_string(),
        path: path.to_string(),
        body,
    })
}

/// Reads and drops up to `limit` bytes through a fixed buffer.
fn discard(input: &mut impl Read, limit: usize, deadline: Instant) {
    const SINK: usize = 64 << 10;
    let mut sink = [0u8; SINK];
    let mut left = limit;
    while left > 0 && Instant::now() < deadline {
        match input.read(&mut sink[..left.min(SINK)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => left -= n,
        }
    }
}

pub fn write_response(output: &mut impl Write, status: u16, json: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    write!(
        output,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], max: usize) -> Result<HttpRequest, Refusal> {
        read_request(&mut &bytes[..], max, Instant::now() + DEADLINE)
    }

    #[test]
    fn reads_a_request_with_a_body() {
        let request = read(b"POST /bank HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\nabc", 10).unwrap();
        assert_eq!(
            request,
            HttpRequest {
                method: "POST".into(),
                path: "/bank".into(),
                body: b"abc".to_vec()
            }
        );
    }

    #[test]
    fn hostile_requests_are_refused_with_their_status() {
        let status = |bytes: &[u8]| read(bytes, 10).unwrap_err().status;
        assert_eq!(
            status(b"POST /bank HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n"),
            413
        );
        assert_eq!(
            status(b"POST /bank HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST /bank HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(status(b"POST /bank HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"), 400);
        assert_eq!(status(b"GET / SPDY\r\n\r\n"), 505);
        assert_eq!(status(b"GET\r\n\r\n"), 400);
        assert_eq!(status(b""), 400);
        let huge_head = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(status(&huge_head), 431);
    }
}
