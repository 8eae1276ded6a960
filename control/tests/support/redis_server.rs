//! A `redis-server` for the tests that share state between control instances.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cluster::TempDir;
use super::{Server, wait_until};

/// A `redis-server` on a fixed port, without persistence; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Redis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): this test needs it; install it with \
                     `apt-get install redis-server`"
                )
            });
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(10), || self.answers()),
            "redis-server did not answer PING on port {} within 10 s",
            self.port
        );
    }

    pub fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The cluster secret the Redis tests' instances and nodes share.
pub const SECRET: &str = "cluster secret for the tests";

/// A `control serve` with `[cluster]` and `[store] redis_url`: one of several control
/// instances sharing `redis`. They use the same certificate files in `dir`, so a node trusts
/// any of them. The signaling rate limit is off (the tests make many offers from one address).
#[allow(dead_code)] // not every test binary starts instances
pub fn instance(redis: &Redis, dir: &TempDir) -> Server {
    let cert = dir.0.join("cert.pem").display().to_string();
    let key = dir.0.join("key.pem").display().to_string();
    let url = redis.url();
    Server::start_serve(
        &[
            ("SFU__AUTH__DEV", "true"),
            ("SFU__CLUSTER__LISTEN", "127.0.0.1:0"),
            ("SFU__CLUSTER__SECRET", SECRET),
            ("SFU__CLUSTER__TLS_CERT", &cert),
            ("SFU__CLUSTER__TLS_KEY", &key),
            ("SFU__STORE__REDIS_URL", &url),
            ("SFU__STORE__NODE_TTL_MS", "3000"),
            ("SFU__LIMITS__SIGNALING_RATE_PER_SEC", "0"),
        ],
        &[],
    )
}
