//! HTTP signaling client for WHIP (publish) and WHEP (watch): POST an SDP offer, get the answer
//! and the session's `Location`, DELETE it at the end. Every request is bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

/// Bound on every HTTP exchange (connect, send, receive).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Response header of a `201 Created` naming the media node that serves the new session (our
/// control; other WHIP/WHEP servers do not send it).
pub const NODE_HEADER: &str = "x-sfu-node";

/// Which signaling resource a session lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /whip/{room}`: publish.
    Whip,
    /// `POST /whep/{room}`: watch.
    Whep,
}

impl Endpoint {
    pub fn path_segment(self) -> &'static str {
        match self {
            Endpoint::Whip => "whip",
            Endpoint::Whep => "whep",
        }
    }
}

/// A session the server created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResource {
    /// Absolute URL of the session (the `Location` header resolved against the base URL).
    pub location: String,
    pub etag: Option<String>,
    /// The SDP answer.
    pub answer: String,
    /// The media node serving the session ([`NODE_HEADER`]); `None` when the server does not
    /// say.
    pub node: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("{method} {url}: {source}")]
    Http {
        method: &'static str,
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("POST {url} answered 201 without a Location header")]
    MissingLocation { url: String },
}

/// HTTP method for [`SignalingClient::request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A request for [`SignalingClient::request`]: anything the server might be sent, including
/// what a well-behaved client never sends (for negative tests).
#[derive(Debug, Clone)]
pub struct HttpRequest<'a> {
    pub method: Method,
    /// Path below the base URL (`/whip/room`) or an absolute URL.
    pub target: &'a str,
    pub content_type: Option<&'a str>,
    pub bearer: Option<&'a str>,
    pub body: &'a [u8],
}

/// What the server answered, whatever the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub etag: Option<String>,
    /// [`NODE_HEADER`], if the server sent it.
    pub node: Option<String>,
    pub body: String,
}

/// Talks to one server's signaling API.
#[derive(Debug, Clone)]
pub struct SignalingClient {
    agent: ureq::Agent,
    /// `scheme://authority`, no trailing slash.
    base: String,
}

impl SignalingClient {
    /// `base` is the server's root URL, e.g. `http://127.0.0.1:8080/`.
    pub fn new(base: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(HTTP_TIMEOUT))
            .max_redirects(0)
            .build();
        Self {
            agent: ureq::Agent::new_with_config(config),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Absolute URL for a path, or the URL itself if already absolute.
    pub fn url(&self, target: &str) -> String {
        if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else if target.starts_with('/') {
            format!("{}{target}", self.base)
        } else {
            format!("{}/{target}", self.base)
        }
    }

    /// POSTs an SDP offer to `/{whip|whep}/{room}` and expects `201 Created` with an answer.
    /// `room` must be URL-safe.
    pub fn offer(
        &self,
        endpoint: Endpoint,
        room: &str,
        token: &str,
        offer_sdp: &str,
    ) -> Result<SessionResource, SignalError> {
        let target = format!("/{}/{room}", endpoint.path_segment());
        let response = self.request(&HttpRequest {
            method: Method::Post,
            target: &target,
            content_type: Some("application/sdp"),
            bearer: Some(token),
            body: offer_sdp.as_bytes(),
        })?;
        let url = self.url(&target);
        if response.status != 201 {
            return Err(SignalError::Status {
                method: "POST",
                url,
                status: response.status,
                body: response.body,
            });
        }
        let location = response
            .location
            .ok_or(SignalError::MissingLocation { url })?;
        Ok(SessionResource {
            location: self.url(&location),
            etag: response.etag,
            answer: response.body,
            node: response.node,
        })
    }

    /// Ends a session: `DELETE {location}`, expecting `200` (any 2xx is accepted).
    pub fn delete(&self, location: &str, token: &str) -> Result<(), SignalError> {
        let response = self.request(&HttpRequest {
            method: Method::Delete,
            target: location,
            content_type: None,
            bearer: Some(token),
            body: &[],
        })?;
        if !(200..300).contains(&response.status) {
            return Err(SignalError::Status {
                method: "DELETE",
                url: self.url(location),
                status: response.status,
                body: response.body,
            });
        }
        Ok(())
    }

    /// `GET {path}` expecting 200; returns the body.
    pub fn get_text(&self, path: &str) -> Result<String, SignalError> {
        let response = self.request(&HttpRequest {
            method: Method::Get,
            target: path,
            content_type: None,
            bearer: None,
            body: &[],
        })?;
        if response.status != 200 {
            return Err(SignalError::Status {
                method: "GET",
                url: self.url(path),
                status: response.status,
                body: response.body,
            });
        }
        Ok(response.body)
    }

    /// Sends any request and returns the response whatever its status.
    pub fn request(&self, req: &HttpRequest<'_>) -> Result<HttpResponse, SignalError> {
        let url = self.url(req.target);
        let method = req.method.as_str();
        let fail = |source| SignalError::Http {
            method,
            url: url.clone(),
            source,
        };
        let auth = req.bearer.map(|t| format!("Bearer {t}"));
        let result = match req.method {
            Method::Get | Method::Delete => {
                let mut b = if req.method == Method::Get {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(auth) = &auth {
                    b = b.header("Authorization", auth);
                }
                if let Some(ct) = req.content_type {
                    b = b.header("Content-Type", ct);
                }
                b.call()
            }
            Method::Post | Method::Put | Method::Patch => {
                let mut b = match req.method {
                    Method::Post => self.agent.post(&url),
                    Method::Put => self.agent.put(&url),
                    _ => self.agent.patch(&url),
                };
                if let Some(auth) = &auth {
                    b = b.header("Authorization", auth);
                }
                if let Some(ct) = req.content_type {
                    b = b.header("Content-Type", ct);
                }
                b.send(req.body)
            }
        };
        let mut response = result.map_err(fail)?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let location = header("location");
        let content_type = header("content-type");
        let etag = header("etag");
        let node = header(NODE_HEADER).filter(|n| !n.is_empty());
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(fail)?;
        Ok(HttpResponse {
            status,
            location,
            content_type,
            etag,
            node,
            body,
        })
    }
}

/// The UDP addresses of the `a=candidate` lines of an SDP.
pub fn candidate_addrs(sdp: &str) -> Vec<SocketAddr> {
    sdp.lines()
        .filter_map(|line| line.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| {
            // foundation component transport priority address port typ ...
            let f: Vec<&str> = c.split_whitespace().collect();
            if f.len() < 6 || !f[2].eq_ignore_ascii_case("udp") {
                return None;
            }
            let ip = f[4].parse().ok()?;
            let port = f[5].parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_against_the_base() {
        let c = SignalingClient::new("http://127.0.0.1:9/");
        assert_eq!(c.url("/whip/r"), "http://127.0.0.1:9/whip/r");
        assert_eq!(c.url("whip/r"), "http://127.0.0.1:9/whip/r");
        assert_eq!(c.url("http://x:1/a"), "http://x:1/a");
    }

    /// Answers the first request on a loopback port with `response`; returns the base URL.
    fn answer_once(response: &'static str) -> (String, std::thread::JoinHandle<()>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("a request");
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("a header line");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().expect("a length");
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("the body");
            let mut stream = reader.into_inner();
            stream.write_all(response.as_bytes()).expect("answered");
        });
        (base, server)
    }

    #[test]
    fn the_node_header_names_the_session_node() {
        let (base, server) = answer_once(
            "HTTP/1.1 201 Created\r\nLocation: /whep/r/s1\r\nX-Sfu-Node: n2\r\n\
             Content-Type: application/sdp\r\nContent-Length: 3\r\nConnection: close\r\n\r\nv=0",
        );
        let session = SignalingClient::new(&base)
            .offer(Endpoint::Whep, "r", "token", "v=0\r\n")
            .expect("created");
        server.join().expect("server");
        assert_eq!(session.node.as_deref(), Some("n2"));
        assert_eq!(session.location, format!("{base}/whep/r/s1"));
        assert_eq!(session.answer, "v=0");
    }

    #[test]
    fn without_the_node_header_the_node_is_unknown() {
        let (base, server) = answer_once(
            "HTTP/1.1 201 Created\r\nLocation: /whip/r/s1\r\nX-Sfu-Node: \r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let response = SignalingClient::new(&base)
            .request(&HttpRequest {
                method: Method::Post,
                target: "/whip/r",
                content_type: Some("application/sdp"),
                bearer: None,
                body: b"v=0\r\n",
            })
            .expect("answered");
        server.join().expect("server");
        assert_eq!(response.status, 201);
        assert_eq!(response.node, None, "an empty name is no name");
        let (base, server) = answer_once(
            "HTTP/1.1 201 Created\r\nLocation: /whip/r/s2\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let session = SignalingClient::new(&base)
            .offer(Endpoint::Whip, "r", "token", "v=0\r\n")
            .expect("created");
        server.join().expect("server");
        assert_eq!(session.node, None);
    }

    #[test]
    fn candidates_are_read_from_sdp() {
        let sdp = "v=0\r\n\
                   a=candidate:1 1 udp 2130706431 127.0.0.1 50001 typ host\r\n\
                   a=candidate:2 1 tcp 2130706431 127.0.0.1 50002 typ host\r\n\
                   a=candidate:bogus\r\n";
        assert_eq!(
            candidate_addrs(sdp),
            vec!["127.0.0.1:50001".parse().expect("addr")]
        );
    }
}
