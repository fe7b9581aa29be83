//! A real HTTP/1.1 origin in its own process (`testkit/http_origin.py`, Python's threading
//! `http.server`): keep-alive, chunked bodies both ways, HEAD, `Expect: 100-continue`,
//! static files and a WebSocket echo. The HTTP proxy tests want a server they did not write.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};

/// A running origin; killed on drop.
pub struct PyOrigin {
    pub addr: SocketAddr,
    child: Child,
}

/// The script's path.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("http_origin.py")
}

impl PyOrigin {
    /// Starts the origin on `ip`, serving the files under `root` besides its routes.
    pub fn start(ip: IpAddr, root: &Path) -> PyOrigin {
        let mut child = Command::new("python3")
            .arg(script())
            .arg(ip.to_string())
            .arg(root)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("the origin prints its port");
        let port: u16 = line.trim().parse().expect("a port number");
        PyOrigin {
            addr: SocketAddr::new(ip, port),
            child,
        }
    }
}

impl Drop for PyOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `n` bytes the origin serves at `/bytes/N` and `/chunked/N`: byte i = i % 251.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
