//! The schema registry's REST API as its tests call it: one HTTP/1.1 request per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(40);
/// How long the registry may answer 5xx while `_schemas` is created or fails over.
pub const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One request, `Connection: close`; (status, body).
pub fn http(address: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(HTTP_READ_TIMEOUT)).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\
         Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(request.as_bytes());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// [`http`], repeated while the registry answers 5xx (its log being created or failing over).
pub fn http_available(address: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let deadline = Instant::now() + AVAILABLE_TIMEOUT;
    loop {
        let (status, answer) = http(address, method, path, body);
        if status < 500 || Instant::now() >= deadline {
            return (status, answer);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}
