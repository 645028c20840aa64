//! The schema registry's REST API as its tests call it: one HTTP/1.1 request per connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(40);
/// What to install for the Python registry scenarios.
pub const REGISTRY_PACKAGES_HINT: &str = "install the pinned Python packages .ci/run lists \
    (confluent-kafka 2.16.1 with its schema-registry, Avro, JSON and Protobuf extras)";
/// How long the registry may answer 5xx while `_schemas` is created or fails over.
pub const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One request, `Connection: close`; (status, body).
pub fn http(address: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\
         Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    super::http_raw(address, request.as_bytes(), HTTP_READ_TIMEOUT)
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
