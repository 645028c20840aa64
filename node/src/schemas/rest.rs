//! Confluent Schema Registry's REST API, on the node's HTTP listener (`http.listen`). Writes
//! are served by the leader of `_schemas` and forwarded to it from any other node
//! ([`super::forward`]).
//!
//! Bodies are bounded ([`BODY_BYTES_MAX`], answered 413) and parsed here; answers are
//! `application/vnd.schemaregistry.v1+json`, and every refusal is Confluent's
//! `{"error_code":..,"message":..}` with its HTTP status. Any content type is accepted on a
//! request (clients send Confluent's, `application/json`, or none).

use super::{Failure, RuntimeError, SchemaRegistry};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cairn_control::schema::state::validate_subject;
use cairn_control::schema::{ParsedSchema, RegistryError, SchemaRequest, VersionSpec, VersionView};
use cairn_storage::LogStore;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Bytes a request body may carry: a schema of up to
/// [`cairn_control::schema::kind::SCHEMA_BYTES_MAX`], escaped as a JSON string.
pub const BODY_BYTES_MAX: usize = 2 * cairn_control::schema::kind::SCHEMA_BYTES_MAX + 4096;

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Shared<S> = State<Arc<SchemaRegistry<S>>>;

pub fn router<S: LogStore>(registry: Arc<SchemaRegistry<S>>) -> Router {
    Router::new()
        .route("/subjects", get(list_subjects::<S>))
        .route(
            "/subjects/{subject}",
            post(lookup::<S>).delete(delete_subject::<S>),
        )
        .route(
            "/subjects/{subject}/versions",
            get(list_versions::<S>).post(register::<S>),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version::<S>).delete(delete_version::<S>),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema::<S>),
        )
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(get_by_id::<S>))
        .route("/schemas/ids/{id}/schema", get(get_raw_by_id::<S>))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id::<S>))
        .route("/schemas/ids/{id}/versions", get(versions_of_id::<S>))
        .route(
            "/config",
            get(get_global_config::<S>)
                .put(put_global_config::<S>)
                .delete(delete_global_config::<S>),
        )
        .route(
            "/config/{subject}",
            get(get_config::<S>)
                .put(put_config::<S>)
                .delete(delete_config::<S>),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check::<S>),
        )
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&registry),
            super::forward::route_writes::<S>,
        ))
        .with_state(registry)
}

fn answer(value: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        value.to_string(),
    )
        .into_response()
}

fn refuse(status: u16, error_code: u32, message: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        json!({ "error_code": error_code, "message": message }).to_string(),
    )
        .into_response()
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match &self {
            Failure::Request(error) => {
                refuse(error.http_status(), error.error_code(), error.to_string())
            }
            Failure::Runtime(error) => {
                let status = match error {
                    RuntimeError::Unavailable { .. } => 503,
                    RuntimeError::Timeout { .. } => 500,
                };
                refuse(status, error.error_code(), error.to_string())
            }
        }
    }
}

type Answer = Result<Response, Failure>;

/// `name=true` in the query string.
fn flag(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(key, value)| key == name && value.eq_ignore_ascii_case("true"))
    })
}

fn subject_checked(subject: &str) -> Result<(), Failure> {
    validate_subject(subject).map_err(Failure::from)
}

fn id_of(given: &str) -> Result<u32, Failure> {
    given
        .parse::<u32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            RegistryError::SchemaNotFound {
                what: given.chars().take(64).collect(),
            }
            .into()
        })
}

/// The value of `name=` in the query string.
fn query_value<'u>(uri: &'u Uri, name: &str) -> Option<&'u str> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// `?format=serialized`: a Protobuf schema as a base64 `FileDescriptorProto` (what
/// confluent-kafka-python's Protobuf deserializer asks for); other types ignore it.
fn text_in_format(schema: &ParsedSchema, uri: &Uri) -> String {
    match query_value(uri, "format") {
        Some("serialized") => schema
            .serialized()
            .unwrap_or_else(|| schema.canonical.clone()),
        _ => schema.canonical.clone(),
    }
}

fn version_json(view: &VersionView, schema: &str) -> Value {
    let mut value = json!({
        "subject": view.subject,
        "version": view.version,
        "id": view.id,
        "schema": schema,
    });
    if let Some(name) = view.schema_type.field() {
        value["schemaType"] = json!(name);
    }
    if !view.references.is_empty() {
        value["references"] = json!(view.references);
    }
    value
}

fn parse_body(body: &[u8]) -> Result<SchemaRequest, Failure> {
    serde_json::from_slice(body).map_err(|error| {
        Failure::from(RegistryError::InvalidSchema {
            reason: format!("the body is not a schema request: {error}"),
        })
    })
}

async fn list_subjects<S: LogStore>(State(registry): Shared<S>, uri: Uri) -> Answer {
    let deleted = flag(&uri, "deleted");
    let subjects = registry.read(|state| state.subjects(deleted)).await?;
    Ok(answer(json!(subjects)))
}

async fn lookup<S: LogStore>(
    State(registry): Shared<S>,
    Path(subject): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    subject_checked(&subject)?;
    let request = parse_body(&body)?;
    let deleted = flag(&uri, "deleted");
    let view = registry
        .read(|state| {
            state
                .parse(&request)
                .and_then(|schema| state.lookup(&subject, &schema, deleted))
        })
        .await??;
    let schema = view.schema.clone();
    Ok(answer(version_json(&view, &schema)))
}

async fn register<S: LogStore>(
    State(registry): Shared<S>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Answer {
    subject_checked(&subject)?;
    let request = parse_body(&body)?;
    let id = registry.register(&subject, &request).await?;
    Ok(answer(json!({ "id": id })))
}

async fn list_versions<S: LogStore>(
    State(registry): Shared<S>,
    Path(subject): Path<String>,
    uri: Uri,
) -> Answer {
    let deleted = flag(&uri, "deleted");
    let versions = registry
        .read(|state| state.versions(&subject, deleted))
        .await??;
    Ok(answer(json!(versions)))
}

async fn get_version<S: LogStore>(
    State(registry): Shared<S>,
    Path((subject, version)): Path<(String, String)>,
    uri: Uri,
) -> Answer {
    let spec = VersionSpec::parse(&version)?;
    let deleted = flag(&uri, "deleted");
    let (view, schema) = registry
        .read(|state| {
            state.version(&subject, spec, deleted).and_then(|view| {
                let schema = state.schema_by_id(view.id)?;
                Ok((view, text_in_format(&schema, &uri)))
            })
        })
        .await??;
    Ok(answer(version_json(&view, &schema)))
}

async fn get_version_schema<S: LogStore>(
    State(registry): Shared<S>,
    Path((subject, version)): Path<(String, String)>,
    uri: Uri,
) -> Answer {
    let spec = VersionSpec::parse(&version)?;
    let deleted = flag(&uri, "deleted");
    let view = registry
        .read(|state| state.version(&subject, spec, deleted))
        .await??;
    // The schema itself, not a JSON string holding it (Confluent answers so).
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        view.schema,
    )
        .into_response())
}

async fn delete_subject<S: LogStore>(
    State(registry): Shared<S>,
    Path(subject): Path<String>,
    uri: Uri,
) -> Answer {
    let permanent = flag(&uri, "permanent");
    let versions = registry
        .write(|state| state.plan_delete_subject(&subject, permanent))
        .await?;
    Ok(answer(json!(versions)))
}

async fn delete_version<S: LogStore>(
    State(registry): Shared<S>,
    Path((subject, version)): Path<(String, String)>,
    uri: Uri,
) -> Answer {
    let spec = VersionSpec::parse(&version)?;
    let permanent = flag(&uri, "permanent");
    let number = registry
        .write(|state| state.plan_delete_version(&subject, spec, permanent))
        .await?;
    Ok(answer(json!(number)))
}

async fn schema_types() -> Response {
    answer(json!(cairn_control::schema::SchemaType::SERVED))
}

fn schema_json(schema: &ParsedSchema, uri: &Uri) -> Value {
    let mut value = json!({ "schema": text_in_format(schema, uri) });
    if let Some(name) = schema.schema_type.field() {
        value["schemaType"] = json!(name);
    }
    if !schema.references.is_empty() {
        value["references"] = json!(schema.references);
    }
    value
}

async fn get_by_id<S: LogStore>(
    State(registry): Shared<S>,
    Path(id): Path<String>,
    uri: Uri,
) -> Answer {
    let id = id_of(&id)?;
    let schema = registry.read(|state| state.schema_by_id(id)).await??;
    Ok(answer(schema_json(&schema, &uri)))
}

async fn get_raw_by_id<S: LogStore>(
    State(registry): Shared<S>,
    Path(id): Path<String>,
    uri: Uri,
) -> Answer {
    let id = id_of(&id)?;
    let schema = registry.read(|state| state.schema_by_id(id)).await??;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        text_in_format(&schema, &uri),
    )
        .into_response())
}

async fn subjects_of_id<S: LogStore>(
    State(registry): Shared<S>,
    Path(id): Path<String>,
    uri: Uri,
) -> Answer {
    let id = id_of(&id)?;
    let deleted = flag(&uri, "deleted");
    let uses = registry
        .read(|state| state.versions_of_id(id, deleted))
        .await??;
    let mut subjects: Vec<String> = uses.into_iter().map(|(subject, _)| subject).collect();
    subjects.dedup();
    Ok(answer(json!(subjects)))
}

async fn versions_of_id<S: LogStore>(
    State(registry): Shared<S>,
    Path(id): Path<String>,
    uri: Uri,
) -> Answer {
    let id = id_of(&id)?;
    let deleted = flag(&uri, "deleted");
    let uses = registry
        .read(|state| state.versions_of_id(id, deleted))
        .await??;
    let uses: Vec<Value> = uses
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(answer(json!(uses)))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn parse_config(body: &[u8]) -> Result<String, Failure> {
    serde_json::from_slice::<ConfigBody>(body)
        .map(|body| body.compatibility)
        .map_err(|error| {
            RegistryError::InvalidLevel {
                given: format!("(the body is not a config request: {error})"),
            }
            .into()
        })
}

async fn config_of<S: LogStore>(
    registry: &SchemaRegistry<S>,
    subject: Option<&str>,
    default_to_global: bool,
) -> Answer {
    let level = registry
        .read(|state| state.level(subject, default_to_global))
        .await??;
    Ok(answer(json!({ "compatibilityLevel": level.name() })))
}

async fn get_global_config<S: LogStore>(State(registry): Shared<S>) -> Answer {
    config_of(&registry, None, true).await
}

async fn get_config<S: LogStore>(
    State(registry): Shared<S>,
    Path(subject): Path<String>,
    uri: Uri,
) -> Answer {
    config_of(&registry, Some(&subject), flag(&uri, "defaultToGlobal")).await
}

async fn set_config<S: LogStore>(
    registry: &SchemaRegistry<S>,
    subject: Option<&str>,
    body: &[u8],
) -> Answer {
    let given = parse_config(body)?;
    let level = registry
        .write(|state| {
            state
                .plan_set_level(subject, &given)
                .map(|(level, record)| (level, vec![record]))
        })
        .await?;
    Ok(answer(json!({ "compatibility": level.name() })))
}

async fn put_global_config<S: LogStore>(State(registry): Shared<S>, body: Bytes) -> Answer {
    set_config(&registry, None, &body).await
}

async fn put_config<S: LogStore>(
    State(registry): Shared<S>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Answer {
    subject_checked(&subject)?;
    set_config(&registry, Some(&subject), &body).await
}

async fn remove_config<S: LogStore>(registry: &SchemaRegistry<S>, subject: Option<&str>) -> Answer {
    let before = registry
        .write(|state| {
            state
                .plan_delete_level(subject)
                .map(|(level, record)| (level, vec![record]))
        })
        .await?;
    Ok(answer(json!({ "compatibilityLevel": before.name() })))
}

async fn delete_global_config<S: LogStore>(State(registry): Shared<S>) -> Answer {
    remove_config(&registry, None).await
}

async fn delete_config<S: LogStore>(
    State(registry): Shared<S>,
    Path(subject): Path<String>,
) -> Answer {
    remove_config(&registry, Some(&subject)).await
}

async fn check<S: LogStore>(
    State(registry): Shared<S>,
    Path((subject, version)): Path<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Answer {
    let spec = VersionSpec::parse(&version)?;
    let request = parse_body(&body)?;
    let messages = registry
        .read(|state| {
            state
                .parse(&request)
                .and_then(|schema| state.check(&subject, spec, &schema))
        })
        .await??;
    let mut value = json!({ "is_compatible": messages.is_empty() });
    if flag(&uri, "verbose") {
        value["messages"] = json!(messages);
    }
    Ok(answer(value))
}
