//! `cairn schema register|list|get|check|delete`: the schema registry's REST API from the
//! command line, against any node's HTTP listener (or any Confluent-compatible registry).
//!
//! Exit codes as the other client commands: 0 on success, 1 with a message on stderr when the
//! registry refused or could not be reached (and for `check`, when the schema is
//! incompatible), 2 for arguments refused before anything was sent.

use cairn_client::cli::{Output, EXIT_FAILURE, EXIT_USAGE};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Where the registry is when `--registry` is not given: a local node's HTTP listener.
pub const DEFAULT_REGISTRY: &str = "http://127.0.0.1:9644";
/// How long connecting, and each read or write, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of an answer the CLI reads.
const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Bytes of a schema file (the registry's own limit is lower; it answers for itself).
const FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The registry's URL, `http://host:port` (any Cairn node's HTTP listener).
    #[arg(long, env = "CAIRN_REGISTRY", default_value = DEFAULT_REGISTRY, global = true)]
    pub registry: String,
    #[command(subcommand)]
    pub command: SchemaCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    Avro,
    Json,
    Protobuf,
}

impl SchemaKind {
    fn field(self) -> &'static str {
        match self {
            SchemaKind::Avro => "AVRO",
            SchemaKind::Json => "JSON",
            SchemaKind::Protobuf => "PROTOBUF",
        }
    }
}

/// A schema given on the command line: its file, type and references.
#[derive(Debug, Args)]
pub struct SchemaSource {
    /// The schema file (`-` for stdin).
    #[arg(short, long)]
    pub file: PathBuf,
    /// The schema's type (default: `protobuf` for a `.proto` file, else `avro`).
    #[arg(short = 't', long = "type", value_enum)]
    pub kind: Option<SchemaKind>,
    /// Schemas this one imports: `name=subject:version`, comma-separated or repeated.
    #[arg(short, long, value_delimiter = ',')]
    pub references: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Register a schema under a subject; prints its id (the same schema keeps its id).
    Register {
        subject: String,
        #[command(flatten)]
        source: SchemaSource,
    },
    /// List subjects, or a subject's versions.
    List {
        /// A subject: list its versions instead.
        subject: Option<String>,
        /// Include soft-deleted subjects or versions.
        #[arg(short, long)]
        deleted: bool,
    },
    /// Print a subject's version (default: the latest), or the schema of an id.
    Get {
        /// The subject (or use `--id`).
        #[arg(required_unless_present = "id", conflicts_with = "id")]
        subject: Option<String>,
        /// A version number or `latest`.
        #[arg(short, long, default_value = "latest")]
        version: String,
        /// A schema id instead of a subject.
        #[arg(short, long)]
        id: Option<u32>,
    },
    /// Check a schema against a subject's compatibility level; exits 1 when incompatible.
    Check {
        subject: String,
        #[command(flatten)]
        source: SchemaSource,
        /// The version to check against (`latest`: what the subject's level checks).
        #[arg(short, long, default_value = "latest")]
        version: String,
    },
    /// Delete a subject, or one version (soft; `--permanent` after a soft delete).
    Delete {
        subject: String,
        /// A version number or `latest`; without it the whole subject.
        #[arg(short, long)]
        version: Option<String>,
        /// Remove for good (the subject or version must be soft-deleted first).
        #[arg(short, long)]
        permanent: bool,
    },
}

/// A failure: what it was and the exit code it gives.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

fn failure(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_FAILURE,
        message: message.into(),
    }
}

/// Runs one `cairn schema` command; the process exit code.
pub fn run(args: SchemaArgs, output: Output) -> i32 {
    match execute(args, output) {
        Ok(()) => 0,
        Err(Failure { code, message }) => {
            eprintln!("error: {message}");
            code
        }
    }
}

/// The registry's address: `http://host:port[/prefix]`.
struct Registry {
    host: String,
    port: u16,
    prefix: String,
}

impl Registry {
    fn parse(url: &str) -> Result<Registry, Failure> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            usage(format!(
                "--registry '{url}': an http:// URL (https is not served by the CLI)"
            ))
        })?;
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| usage(format!("--registry '{url}': a bad port '{port}'")))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(usage(format!("--registry '{url}': no host")));
        }
        Ok(Registry {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            prefix: prefix.to_string(),
        })
    }

    /// One request; (status, JSON body). Non-JSON bodies are refused as a failure.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Failure> {
        let address = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|error| failure(format!("{}: {error}", self.host)))?
            .next()
            .ok_or_else(|| failure(format!("{} has no address", self.host)))?;
        let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)
            .map_err(|error| failure(format!("cannot reach the registry at {address}: {error}")))?;
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n\
             Accept: application/vnd.schemaregistry.v1+json, application/json\r\n\
             Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
            self.prefix,
            self.host,
            self.port,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|error| failure(format!("sending to the registry: {error}")))?;
        let mut answer = Vec::new();
        stream
            .take(ANSWER_BYTES_MAX as u64 + 1)
            .read_to_end(&mut answer)
            .map_err(|error| failure(format!("reading the registry's answer: {error}")))?;
        if answer.len() > ANSWER_BYTES_MAX {
            return Err(failure(format!(
                "the registry's answer is larger than {ANSWER_BYTES_MAX} bytes"
            )));
        }
        let (status, body) = parse_response(&answer)?;
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|error| {
                failure(format!(
                    "the registry answered {status} with a body that is not JSON: {error}"
                ))
            })?
        };
        Ok((status, value))
    }

    /// A request that must succeed: its JSON, or the registry's refusal as a failure.
    fn expect(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let (status, value) = self.call(method, path, body)?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        let code = value["error_code"].as_u64().unwrap_or(u64::from(status));
        Err(failure(format!(
            "the registry refused ({status}, {code}): {message}"
        )))
    }
}

/// Status and body of an HTTP/1.1 answer (Content-Length, chunked, or up to the close).
fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>), Failure> {
    let split = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| failure("the registry's answer has no complete header"))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let body = &answer[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| failure("the registry's answer has no HTTP status"))?;
    let chunked = lines.any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut decoded = Vec::new();
    let mut rest = body;
    // Bounded: every round consumes at least the size line.
    loop {
        let end = rest
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| failure("a chunked answer is cut short"))?;
        let size_text = String::from_utf8_lossy(&rest[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| failure("a chunked answer has a bad chunk size"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, decoded));
        }
        if rest.len() < size {
            return Err(failure("a chunked answer is cut short"));
        }
        decoded.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
}

/// Percent-encodes a path segment (subjects may hold any character).
fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn version_checked(version: &str) -> Result<String, Failure> {
    if version == "latest" || version.parse::<u32>().is_ok_and(|number| number > 0) {
        Ok(version.to_string())
    } else {
        Err(usage(format!(
            "--version '{version}': a version number (1 or more) or 'latest'"
        )))
    }
}

/// `name=subject:version` into Confluent's reference object.
fn reference(given: &str) -> Result<Value, Failure> {
    let refused = || {
        usage(format!(
            "--references '{given}': each is name=subject:version, e.g. \
             common.proto=common-value:1"
        ))
    };
    let (name, target) = given.split_once('=').ok_or_else(refused)?;
    let (subject, version) = target.rsplit_once(':').ok_or_else(refused)?;
    let version: u32 = version.parse().map_err(|_| refused())?;
    if name.is_empty() || subject.is_empty() || version == 0 {
        return Err(refused());
    }
    Ok(json!({ "name": name, "subject": subject, "version": version }))
}

/// The request body for a schema source.
fn schema_body(source: &SchemaSource) -> Result<Value, Failure> {
    let text = if source.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(|error| usage(format!("reading the schema from stdin: {error}")))?;
        text
    } else {
        let metadata = std::fs::metadata(&source.file)
            .map_err(|error| usage(format!("--file {}: {error}", source.file.display())))?;
        if metadata.len() > FILE_BYTES_MAX {
            return Err(usage(format!(
                "--file {}: more than {FILE_BYTES_MAX} bytes",
                source.file.display()
            )));
        }
        std::fs::read_to_string(&source.file)
            .map_err(|error| usage(format!("--file {}: {error}", source.file.display())))?
    };
    if text.len() as u64 > FILE_BYTES_MAX {
        return Err(usage(format!(
            "the schema is more than {FILE_BYTES_MAX} bytes"
        )));
    }
    let kind = source.kind.unwrap_or_else(|| {
        if source.file.extension().is_some_and(|ext| ext == "proto") {
            SchemaKind::Protobuf
        } else {
            SchemaKind::Avro
        }
    });
    let references = source
        .references
        .iter()
        .map(|given| reference(given))
        .collect::<Result<Vec<Value>, Failure>>()?;
    let mut body = json!({ "schema": text });
    if kind != SchemaKind::Avro {
        body["schemaType"] = json!(kind.field());
    }
    if !references.is_empty() {
        body["references"] = json!(references);
    }
    Ok(body)
}

fn print(output: Output, value: &Value, text: impl FnOnce() -> String) {
    match output {
        Output::Json => match serde_json::to_string_pretty(value) {
            Ok(pretty) => println!("{pretty}"),
            Err(error) => eprintln!("error: cannot write JSON: {error}"),
        },
        Output::Text => println!("{}", text()),
    }
}

fn lines(value: &Value) -> String {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<String>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn execute(args: SchemaArgs, output: Output) -> Result<(), Failure> {
    let registry = Registry::parse(&args.registry)?;
    match args.command {
        SchemaCommand::Register { subject, source } => {
            let body = schema_body(&source)?;
            let path = format!("/subjects/{}/versions", segment(&subject));
            let answer = registry.expect("POST", &path, Some(&body))?;
            let id = answer["id"].clone();
            // The version it is under, for people and scripts alike.
            let lookup = registry.expect(
                "POST",
                &format!("/subjects/{}", segment(&subject)),
                Some(&body),
            )?;
            let report = json!({ "subject": subject, "id": id, "version": lookup["version"] });
            print(output, &report, || {
                format!(
                    "registered '{subject}' version {} with id {id}",
                    lookup["version"]
                )
            });
        }
        SchemaCommand::List { subject, deleted } => {
            let query = if deleted { "?deleted=true" } else { "" };
            let path = match &subject {
                Some(subject) => format!("/subjects/{}/versions{query}", segment(subject)),
                None => format!("/subjects{query}"),
            };
            let answer = registry.expect("GET", &path, None)?;
            print(output, &answer, || lines(&answer));
        }
        SchemaCommand::Get {
            subject,
            version,
            id,
        } => {
            let answer = match (id, subject) {
                (Some(id), _) => {
                    let mut answer = registry.expect("GET", &format!("/schemas/ids/{id}"), None)?;
                    answer["id"] = json!(id);
                    answer
                }
                (None, Some(subject)) => {
                    let version = version_checked(&version)?;
                    registry.expect(
                        "GET",
                        &format!("/subjects/{}/versions/{version}", segment(&subject)),
                        None,
                    )?
                }
                (None, None) => return Err(usage("give a subject or --id")),
            };
            print(output, &answer, || {
                let mut text = String::new();
                if let Some(subject) = answer["subject"].as_str() {
                    text.push_str(&format!("subject {subject} version {} ", answer["version"]));
                }
                text.push_str(&format!(
                    "id {} type {}\n",
                    answer["id"],
                    answer["schemaType"].as_str().unwrap_or("AVRO")
                ));
                if let Some(references) = answer["references"].as_array() {
                    for reference in references {
                        text.push_str(&format!(
                            "reference {}={}:{}\n",
                            reference["name"].as_str().unwrap_or(""),
                            reference["subject"].as_str().unwrap_or(""),
                            reference["version"]
                        ));
                    }
                }
                text.push_str(answer["schema"].as_str().unwrap_or(""));
                text
            });
        }
        SchemaCommand::Check {
            subject,
            source,
            version,
        } => {
            let version = version_checked(&version)?;
            let body = schema_body(&source)?;
            let path = format!(
                "/compatibility/subjects/{}/versions/{version}?verbose=true",
                segment(&subject)
            );
            let answer = registry.expect("POST", &path, Some(&body))?;
            let compatible = answer["is_compatible"].as_bool().unwrap_or(false);
            print(output, &answer, || {
                if compatible {
                    format!("compatible with '{subject}' version {version}")
                } else {
                    let mut text = format!("incompatible with '{subject}' version {version}");
                    for message in answer["messages"].as_array().into_iter().flatten() {
                        text.push_str(&format!("\n  {}", message.as_str().unwrap_or("")));
                    }
                    text
                }
            });
            if !compatible {
                return Err(failure("the schema is incompatible"));
            }
        }
        SchemaCommand::Delete {
            subject,
            version,
            permanent,
        } => {
            let query = if permanent { "?permanent=true" } else { "" };
            let path = match &version {
                Some(version) => format!(
                    "/subjects/{}/versions/{}{query}",
                    segment(&subject),
                    version_checked(version)?
                ),
                None => format!("/subjects/{}{query}", segment(&subject)),
            };
            let answer = registry.expect("DELETE", &path, None)?;
            let how = if permanent { "permanently" } else { "soft" };
            print(
                output,
                &json!({ "subject": subject, "deleted": answer, "permanent": permanent }),
                || format!("deleted ({how}) '{subject}' version(s) {answer}"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_and_references_are_checked_before_anything_is_sent() {
        let registry = Registry::parse("http://127.0.0.1:9644/prefix/").unwrap();
        assert_eq!(
            (
                registry.host.as_str(),
                registry.port,
                registry.prefix.as_str()
            ),
            ("127.0.0.1", 9644, "/prefix")
        );
        assert_eq!(Registry::parse("http://[::1]:81").unwrap().host, "::1");
        for bad in [
            "https://x:1",
            "127.0.0.1:9644",
            "http://:1",
            "http://x:port",
        ] {
            assert_eq!(
                Registry::parse(bad).err().map(|f| f.code),
                Some(EXIT_USAGE),
                "{bad}"
            );
        }
        assert_eq!(
            reference("common.proto=common:2").ok(),
            Some(json!({"name": "common.proto", "subject": "common", "version": 2}))
        );
        for bad in ["x", "a=b", "a=b:0", "=b:1", "a=:1", "a=b:x"] {
            assert_eq!(
                reference(bad).err().map(|f| f.code),
                Some(EXIT_USAGE),
                "{bad}"
            );
        }
        assert!(version_checked("0").is_err());
        assert!(version_checked("latest").is_ok());
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn answers_with_a_length_or_in_chunks_are_read() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]";
        assert_eq!(parse_response(plain).ok(), Some((200, b"[]".to_vec())));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).ok(),
            Some((404, b"{\"a\":1}".to_vec()))
        );
        assert!(parse_response(b"HTTP/1.1 200").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }
}
