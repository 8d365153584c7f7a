//! The little HTTP/1.1 the update listener speaks: one request per connection, a head of at
//! most 16 KiB parsed by httparse in a buffer of ours, a body only with one `Content-Length` of
//! digits and never beyond a limit, and one deadline for the whole request that bounds every
//! read (each read waits at most the time left).
//!
//! Not a server crate, because of what a device on a shared line network must survive:
//! tiny_http 0.12, for one, drains an oversized body into a buffer of the announced length (one
//! request with `Content-Length: 10^12` aborts the process) and has no read deadline.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Request line and headers together.
const MAX_HEAD: usize = 16 << 10;
const MAX_HEADERS: usize = 64;
/// The most a body grows by per read.
const CHUNK: usize = 64 << 10;
/// The whole request must arrive within this on a device.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Where a request comes from: a socket, whose reads wait at most the time they are given, or
/// bytes in memory (tests, fuzzing), which never wait.
pub trait Source: Read {
    fn wait_at_most(&mut self, time: Duration) -> io::Result<()>;
}

impl Source for &TcpStream {
    fn wait_at_most(&mut self, time: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(time))
    }
}

impl Source for &[u8] {
    fn wait_at_most(&mut self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

/// Why a request was refused, with the HTTP status the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

pub fn refuse(status: u16, message: impl ToString) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

/// A source read under a deadline.
struct Timed<'a, S> {
    source: &'a mut S,
    deadline: Instant,
}

impl<S: Source> Timed<'_, S> {
    /// One read, waiting no longer than the time left; 0 at the end of the input.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Refusal> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(refuse(408, "the request took too long"));
            }
            self.source
                .wait_at_most(left)
                .map_err(|e| refuse(500, format!("cannot bound the read: {e}")))?;
            match self.source.read(buf) {
                Ok(n) => return Ok(n),
                // A timeout or a signal: the deadline decides.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(refuse(400, format!("cannot read the request: {e}"))),
            }
        }
    }
}

/// What the head says.
struct Head {
    method: String,
    path: String,
    content_length: u64,
}

/// A request whose head is read and whose body is still to come.
pub(crate) struct Incoming<'a, S> {
    input: Timed<'a, S>,
    head: Head,
    /// Bytes after the head that came with it.
    early: Vec<u8>,
}

/// Reads one request. A body over `max_body` is refused (413) after discarding it, up to twice
/// `max_body` bytes, so that an honest client still reads the answer while a hostile length
/// costs nothing; a body within it is grown as its bytes arrive. Never panics, whatever the
/// bytes.
pub fn read_request<S: Source>(source: &mut S, max_body: usize, deadline: Instant) -> Result<HttpRequest, Refusal> {
    read_head(source, deadline)?.read_body(max_body)
}

/// Reads a request's head (what `read_request` does before the body).
pub(crate) fn read_head<S: Source>(source: &mut S, deadline: Instant) -> Result<Incoming<'_, S>, Refusal> {
    let mut input = Timed { source, deadline };
    let mut buffer = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    let (head, head_len) = loop {
        if filled == MAX_HEAD {
            return Err(refuse(431, "request head too large"));
        }
        let read = input.read(&mut buffer[filled..])?;
        if read == 0 {
            return Err(refuse(400, "the request ended inside its head"));
        }
        filled += read;
        // A head can only be complete at the end of a line.
        if !buffer[filled - read..filled].contains(&b'\n') {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buffer[..filled]) {
            Ok(httparse::Status::Complete(len)) => break (parse_head(&request)?, len),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::Version) => return Err(refuse(505, "only HTTP/1.x is spoken here")),
            Err(httparse::Error::TooManyHeaders) => return Err(refuse(431, "too many headers")),
            Err(e) => return Err(refuse(400, format!("malformed request: {e}"))),
        }
    };
    buffer.truncate(filled);
    buffer.drain(..head_len);
    Ok(Incoming {
        input,
        head,
        early: buffer,
    })
}

impl<S: Source> Incoming<'_, S> {
    /// Whether reading the body will hold it in memory: it has one, within `max_body`.
    pub(crate) fn holds_a_body(&self, max_body: usize) -> bool {
        (1..=max_body as u64).contains(&self.head.content_length)
    }

    /// Reads the body (see `read_request`).
    pub(crate) fn read_body(mut self, max_body: usize) -> Result<HttpRequest, Refusal> {
        let head = self.head;
        let early = &self.early[..];
        if head.content_length > max_body as u64 {
            let limit = head.content_length.min(max_body.saturating_mul(2) as u64);
            discard(&mut self.input, limit.saturating_sub(early.len() as u64));
            return Err(refuse(
                413,
                format!("{} bytes, at most {max_body} accepted", head.content_length),
            ));
        }
        let length = head.content_length as usize;
        let mut body = Vec::new();
        body.extend_from_slice(&early[..early.len().min(length)]);
        while body.len() < length {
            let start = body.len();
            let want = (length - start).min(CHUNK);
            body.try_reserve(want)
                .map_err(|_| refuse(503, "no memory for the body now"))?;
            body.resize(start + want, 0);
            let read = self.input.read(&mut body[start..])?;
            if read == 0 {
                return Err(refuse(400, "the request ended inside its body"));
            }
            body.truncate(start + read);
        }
        Ok(HttpRequest {
            method: head.method,
            path: head.path,
            body,
        })
    }
}

fn parse_head(request: &httparse::Request) -> Result<Head, Refusal> {
    let mut content_length = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(refuse(411, "send the body with a Content-Length"));
        }
        if !header.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let value = decimal(header.value).ok_or_else(|| {
            refuse(
                400,
                format!(
                    "Content-Length {:?} is not a decimal number",
                    String::from_utf8_lossy(header.value)
                ),
            )
        })?;
        if content_length.is_some_and(|first| first != value) {
            return Err(refuse(400, "conflicting Content-Length headers"));
        }
        content_length = Some(value);
    }
    Ok(Head {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        content_length: content_length.unwrap_or(0),
    })
}

/// Digits only (no sign, no spaces inside), within u64.
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Reads and drops up to `limit` bytes through a fixed buffer, until the deadline.
fn discard<S: Source>(input: &mut Timed<S>, limit: u64) {
    let mut sink = [0u8; 8 << 10];
    let mut left = limit;
    while left > 0 {
        let want = left.min(sink.len() as u64) as usize;
        match input.read(&mut sink[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => left -= n as u64,
        }
    }
}

/// Writes a whole answer: status line, `content_type`, length, `body` (cached for good when
/// `immutable`, else never); the connection closes after.
pub(crate) fn write_response(
    output: &mut impl Write,
    status: u16,
    content_type: &str,
    immutable: bool,
    body: &[u8],
) -> std::io::Result<()> {
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
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    write!(
        output,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: {}\r\n\
         Connection: close\r\n\r\n",
        body.len(),
        if immutable {
            "max-age=31536000, immutable"
        } else {
            "no-store"
        }
    )?;
    output.write_all(body)?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8], max: usize) -> Result<HttpRequest, Refusal> {
        read_request(&mut &bytes[..], max, Instant::now() + DEADLINE)
    }

    fn status(bytes: &[u8]) -> u16 {
        read(bytes, 10).unwrap_err().status
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
        let twice = read(
            b"POST /bank HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
            10,
        );
        assert_eq!(twice.unwrap().body, b"ab", "the same length twice is one length");
    }

    #[test]
    fn hostile_requests_are_refused_with_their_status() {
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
        let many = [
            b"GET / HTTP/1.1\r\n".as_slice(),
            &b"X: y\r\n".repeat(MAX_HEADERS + 1),
            b"\r\n",
        ]
        .concat();
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn a_content_length_is_one_decimal_number() {
        for value in ["+5", "-5", " 5x", "5x", "", "0x5", "5 5", "5,5", "\u{663}"] {
            let request = format!("POST /bank HTTP/1.1\r\nContent-Length:{value}\r\n\r\nabcde");
            let refusal = read(request.as_bytes(), 10).unwrap_err();
            assert_eq!(refusal.status, 400, "{value:?}: {}", refusal.message);
        }
        let conflicting = b"POST /bank HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 5\r\n\r\nabcde";
        let refusal = read(conflicting, 10).unwrap_err();
        assert_eq!(refusal, refuse(400, "conflicting Content-Length headers"));
        assert_eq!(
            read(b"POST /b HTTP/1.1\r\nContent-Length:  5 \r\n\r\nabcde", 10)
                .unwrap()
                .body
                .len(),
            5
        );
    }

    /// Gives a request one byte per read and records how long each read was allowed to wait.
    struct Trickle<'a> {
        bytes: &'a [u8],
        waits: Vec<Duration>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.bytes.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    impl Source for Trickle<'_> {
        fn wait_at_most(&mut self, time: Duration) -> io::Result<()> {
            self.waits.push(time);
            Ok(())
        }
    }

    #[test]
    fn every_read_waits_at_most_the_time_left() {
        let bytes = b"POST /bank HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let mut trickle = Trickle {
            bytes,
            waits: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(7);
        let request = read_request(&mut trickle, 10, deadline).unwrap();
        assert_eq!(request.body, b"abc");
        assert_eq!(trickle.waits.len(), bytes.len(), "one bound per read");
        assert!(trickle.waits.windows(2).all(|w| w[1] <= w[0]));
        assert!(trickle.waits[0] <= Duration::from_secs(7));

        let mut late = Trickle { bytes, waits: vec![] };
        let refusal = read_request(&mut late, 10, Instant::now()).unwrap_err();
        assert_eq!((refusal.status, late.waits.len()), (408, 0));
    }
}
