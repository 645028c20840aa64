//! [`Registry`]: subjects, versions, ids and compatibility levels, built by applying committed
//! `_schemas` records in offset order, plus the queries and write planners of the REST API.
//!
//! A planner reads the state and returns the records a write needs; nothing changes until
//! those records come back through [`Registry::apply`] from the log. Apply re-validates each
//! record, because another node may have planned from the same state (two registrations
//! racing for one id or one version) and because any Kafka client may produce to `_schemas`:
//! the first committed record wins and the loser is ignored on every node alike.
//!
//! Ids are never reused: a new id is above the highest id ever given, which the state learns
//! from every schema record and from the id high-water record a permanent delete writes (see
//! [`super::records`]), so it survives compaction cleaning away the deleted records. A schema
//! whose every version was permanently deleted is forgotten (registering it again gives it a
//! new id): a node replaying the deleted records and one replaying a log compacted without
//! them then decide every later record alike.

use super::kind::{Level, ParsedSchema, Reference, SchemaRequest, SchemaType};
use super::records::{self, ConfigValue, Decoded, SchemaRecord, SchemaValue};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Schemas one schema's references may pull in, transitively.
pub const IMPORTS_MAX: usize = 256;

/// Bytes of a subject name.
pub const SUBJECT_BYTES_MAX: usize = 1024;

/// What the REST API answers with: Confluent's HTTP status and `error_code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{subject}' not found.")]
    SubjectNotFound { subject: String },
    #[error("Version {version} not found.")]
    VersionNotFound { version: String },
    #[error("Schema {what} not found")]
    SchemaNotFound { what: String },
    #[error("Subject '{subject}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted { subject: String },
    #[error("Subject '{subject}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted { subject: String },
    #[error("Version {version} of subject '{subject}' was soft deleted. Set permanent=true to delete permanently")]
    VersionSoftDeleted { subject: String, version: u32 },
    #[error("Version {version} of subject '{subject}' was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted { subject: String, version: u32 },
    #[error("Subject '{subject}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured { subject: String },
    #[error("Schema being registered is incompatible with an earlier schema for subject '{subject}', details: [{}]", messages.join(", "))]
    Incompatible {
        subject: String,
        messages: Vec<String>,
    },
    #[error("Invalid schema: {reason}")]
    InvalidSchema { reason: String },
    #[error("The specified version '{given}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion { given: String },
    #[error("Invalid compatibility level '{given}'. Valid values are NONE, BACKWARD, FORWARD, FULL, BACKWARD_TRANSITIVE, FORWARD_TRANSITIVE, and FULL_TRANSITIVE")]
    InvalidLevel { given: String },
    #[error("Invalid subject: {reason}")]
    InvalidSubject { reason: String },
    #[error("One or more references exist to the schema {{subject={subject},version={version}}}")]
    ReferenceExists { subject: String, version: u32 },
}

impl RegistryError {
    /// The HTTP status Confluent answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema { .. }
            | RegistryError::InvalidVersion { .. }
            | RegistryError::InvalidLevel { .. }
            | RegistryError::InvalidSubject { .. }
            | RegistryError::ReferenceExists { .. } => 422,
            _ => 404,
        }
    }

    /// Confluent's `error_code`.
    pub fn error_code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound { .. } => 40401,
            RegistryError::VersionNotFound { .. } => 40402,
            RegistryError::SchemaNotFound { .. } => 40403,
            RegistryError::SubjectSoftDeleted { .. } => 40404,
            RegistryError::SubjectNotSoftDeleted { .. } => 40405,
            RegistryError::VersionSoftDeleted { .. } => 40406,
            RegistryError::VersionNotSoftDeleted { .. } => 40407,
            RegistryError::SubjectLevelNotConfigured { .. } => 40408,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema { .. } => 42201,
            RegistryError::InvalidVersion { .. } => 42202,
            RegistryError::InvalidLevel { .. } => 42203,
            RegistryError::InvalidSubject { .. } => 42208,
            RegistryError::ReferenceExists { .. } => 42206,
        }
    }
}

/// A version as the REST API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    /// `latest`, `-1` or a number in [1, 2^31-1].
    pub fn parse(given: &str) -> Result<VersionSpec, RegistryError> {
        if given == "latest" || given == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match given.parse::<u32>() {
            Ok(number) if (1..=i32::MAX as u32).contains(&number) => {
                Ok(VersionSpec::Number(number))
            }
            _ => Err(RegistryError::InvalidVersion {
                given: given.chars().take(64).collect(),
            }),
        }
    }
}

/// One version of one subject, as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionView {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema_type: SchemaType,
    pub schema: String,
    pub references: Vec<Reference>,
}

/// What a registration needs: nothing (already registered) or records to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    Existing {
        id: u32,
    },
    Append {
        id: u32,
        version: u32,
        record: SchemaRecord,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    id: u32,
    deleted: bool,
}

#[derive(Debug, Default)]
struct Subject {
    versions: BTreeMap<u32, Version>,
    level: Option<Level>,
}

/// The registry every node rebuilds from `_schemas`.
#[derive(Debug, Default)]
pub struct Registry {
    /// Every id ever committed and its schema; kept after hard deletes so no id is reused.
    schemas: BTreeMap<u32, ParsedSchema>,
    ids: HashMap<(SchemaType, String), u32>,
    subjects: BTreeMap<String, Subject>,
    global_level: Option<Level>,
    /// The highest id ever given: of every schema record applied and every high-water record.
    highest_id: u32,
    /// The value of the newest id high-water record, the one compaction keeps.
    high_water_newest: u32,
    /// The highest value any id high-water record carried.
    high_water_max: u32,
    /// Records ignored at apply (foreign or lost races), for operators.
    ignored: u64,
}

pub fn validate_subject(subject: &str) -> Result<(), RegistryError> {
    if subject.is_empty() || subject.len() > SUBJECT_BYTES_MAX {
        return Err(RegistryError::InvalidSubject {
            reason: format!("a subject has 1 to {SUBJECT_BYTES_MAX} bytes"),
        });
    }
    if subject.chars().any(char::is_control) {
        return Err(RegistryError::InvalidSubject {
            reason: "a subject has no control characters".to_string(),
        });
    }
    Ok(())
}

impl Registry {
    /// Applies one committed record (`value` `None`: a tombstone). Returns why it was ignored,
    /// if it was; the state is then exactly as before.
    pub fn apply(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), String> {
        let outcome = records::decode(key, value).and_then(|decoded| self.apply_decoded(decoded));
        if outcome.is_err() {
            self.ignored += 1;
        }
        outcome
    }

    fn apply_decoded(&mut self, decoded: Decoded) -> Result<(), String> {
        match decoded {
            Decoded::Config { subject, value } => {
                let level = value.map(
                    |ConfigValue {
                         compatibility_level,
                     }| compatibility_level,
                );
                match subject {
                    None => self.global_level = level,
                    Some(subject) => {
                        validate_subject(&subject).map_err(|error| error.to_string())?;
                        match level {
                            Some(level) => {
                                self.subjects.entry(subject).or_default().level = Some(level)
                            }
                            None => {
                                if let Some(entry) = self.subjects.get_mut(&subject) {
                                    entry.level = None;
                                }
                                self.forget_if_empty(&subject);
                            }
                        }
                    }
                }
                Ok(())
            }
            Decoded::Schema {
                subject,
                version,
                value: None,
            } => {
                let removed = self
                    .subjects
                    .get_mut(&subject)
                    .and_then(|entry| entry.versions.remove(&version));
                self.forget_if_empty(&subject);
                if let Some(removed) = removed {
                    self.forget_if_unused(removed.id);
                }
                Ok(())
            }
            Decoded::IdHighWater {
                highest_id: Some(highest_id),
            } => {
                if highest_id > i32::MAX as u32 {
                    return Err("an id is in [1, 2^31-1]".to_string());
                }
                self.highest_id = self.highest_id.max(highest_id);
                self.high_water_newest = highest_id;
                self.high_water_max = self.high_water_max.max(highest_id);
                Ok(())
            }
            Decoded::IdHighWater { highest_id: None } => {
                // Only a foreign client writes this; compaction will drop the high water, so
                // the next write rewrites it (see `high_water_repair`).
                self.high_water_newest = 0;
                Ok(())
            }
            Decoded::Schema {
                subject,
                version,
                value: Some(value),
            } => self.apply_schema(subject, version, value),
        }
    }

    fn apply_schema(
        &mut self,
        subject: String,
        version: u32,
        value: SchemaValue,
    ) -> Result<(), String> {
        validate_subject(&subject).map_err(|error| error.to_string())?;
        if version == 0 || version > i32::MAX as u32 || value.id == 0 || value.id > i32::MAX as u32
        {
            return Err("version and id are in [1, 2^31-1]".to_string());
        }
        let schema_type = SchemaType::parse(value.schema_type.as_deref())?;
        let imports = self
            .imports(&value.references)
            .map_err(|error| error.to_string())?;
        let parsed = ParsedSchema::parse(
            schema_type,
            &value.schema,
            value.references.clone(),
            &imports,
        )?;
        match self.schemas.get(&value.id) {
            Some(known) if *known != parsed => {
                return Err(format!("id {} already names another schema", value.id))
            }
            Some(_) => {}
            None => {
                if let Some(other) = self.ids.get(&(schema_type, parsed.identity().to_string())) {
                    return Err(format!("this schema already has id {other}"));
                }
            }
        }
        let existing = self
            .subjects
            .get(&subject)
            .and_then(|entry| entry.versions.get(&version).copied());
        match existing {
            Some(known) if known.id != value.id => {
                return Err(format!(
                    "{subject} version {version} already has id {}",
                    known.id
                ))
            }
            // Only a soft delete rewrites a version; re-registering makes a new version.
            Some(known) if known.deleted && !value.deleted => {
                return Err(format!("{subject} version {version} is soft-deleted"))
            }
            Some(_) => {}
            None => {
                let newest = self
                    .subjects
                    .get(&subject)
                    .and_then(|entry| entry.versions.keys().next_back().copied())
                    .unwrap_or(0);
                if version <= newest {
                    return Err(format!("{subject} already has version {newest}"));
                }
            }
        }
        self.ids
            .entry((schema_type, parsed.identity().to_string()))
            .or_insert(value.id);
        self.schemas.entry(value.id).or_insert(parsed);
        self.highest_id = self.highest_id.max(value.id);
        self.subjects.entry(subject).or_default().versions.insert(
            version,
            Version {
                id: value.id,
                deleted: value.deleted,
            },
        );
        Ok(())
    }

    /// Forgets an id's schema once no version of any subject uses it (a permanent delete):
    /// the high water still keeps the id from being given again.
    fn forget_if_unused(&mut self, id: u32) {
        if self.uses_of(id).next().is_some() {
            return;
        }
        if let Some(schema) = self.schemas.remove(&id) {
            let identity = (schema.schema_type, schema.identity().to_string());
            if self.ids.get(&identity) == Some(&id) {
                self.ids.remove(&identity);
            }
        }
    }

    /// The highest id ever given, as this state knows it.
    pub fn highest_id(&self) -> u32 {
        self.highest_id
    }

    /// A record restoring the id high water when the newest high-water record (the one
    /// compaction keeps) carries less than an earlier one: two permanent deletes planned on
    /// different nodes from different states, the staler committed last. Any write appends
    /// it once it sees this, before compaction can clean the higher one away.
    pub fn high_water_repair(&self) -> Option<SchemaRecord> {
        (self.high_water_newest < self.high_water_max)
            .then(|| records::id_high_water_record(self.highest_id.max(self.high_water_max)))
    }

    fn forget_if_empty(&mut self, subject: &str) {
        if self
            .subjects
            .get(subject)
            .is_some_and(|entry| entry.versions.is_empty() && entry.level.is_none())
        {
            self.subjects.remove(subject);
        }
    }

    /// Records ignored at apply so far.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Parses a schema as the REST API receives it, its references resolved against the
    /// registered schemas.
    pub fn parse(&self, request: &SchemaRequest) -> Result<ParsedSchema, RegistryError> {
        let schema_type = SchemaType::parse(request.schema_type.as_deref())
            .map_err(|reason| RegistryError::InvalidSchema { reason })?;
        let imports = self.imports(&request.references)?;
        ParsedSchema::parse(
            schema_type,
            &request.schema,
            request.references.clone(),
            &imports,
        )
        .map_err(|reason| RegistryError::InvalidSchema { reason })
    }

    /// The schemas `references` name, and theirs, by import name (at most [`IMPORTS_MAX`]).
    /// A reference may name a soft-deleted version (it was live when it was referenced).
    pub fn imports(
        &self,
        references: &[Reference],
    ) -> Result<BTreeMap<String, String>, RegistryError> {
        let mut imports = BTreeMap::new();
        let mut pending: Vec<&Reference> = references.iter().collect();
        while let Some(reference) = pending.pop() {
            if imports.len() >= IMPORTS_MAX {
                return Err(RegistryError::InvalidSchema {
                    reason: format!("the references pull in more than {IMPORTS_MAX} schemas"),
                });
            }
            let id = self
                .subjects
                .get(&reference.subject)
                .and_then(|entry| entry.versions.get(&reference.version))
                .map(|version| version.id)
                .ok_or_else(|| RegistryError::InvalidSchema {
                    reason: format!(
                        "reference '{}': subject '{}' has no version {}",
                        reference.name, reference.subject, reference.version
                    ),
                })?;
            let schema = &self.schemas[&id];
            match imports.get(&reference.name) {
                Some(text) if text != &schema.canonical => {
                    return Err(RegistryError::InvalidSchema {
                        reason: format!(
                            "reference '{}' names two different schemas",
                            reference.name
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    imports.insert(reference.name.clone(), schema.canonical.clone());
                    pending.extend(schema.references.iter());
                }
            }
        }
        Ok(imports)
    }

    /// Refuses deleting `subject` `version` while a version of any subject references it: a
    /// live one for a soft delete, any one for a permanent delete (a soft-deleted version may
    /// still be read, and replaying it needs what it references).
    fn not_referenced(
        &self,
        subject: &str,
        version: u32,
        permanent: bool,
    ) -> Result<(), RegistryError> {
        let referenced = self.subjects.values().any(|entry| {
            entry.versions.values().any(|v| {
                (permanent || !v.deleted)
                    && self.schemas[&v.id]
                        .references
                        .iter()
                        .any(|r| r.subject == subject && r.version == version)
            })
        });
        if referenced {
            return Err(RegistryError::ReferenceExists {
                subject: subject.to_string(),
                version,
            });
        }
        Ok(())
    }

    fn subject(&self, subject: &str) -> Result<&Subject, RegistryError> {
        self.subjects
            .get(subject)
            .filter(|entry| !entry.versions.is_empty())
            .ok_or_else(|| RegistryError::SubjectNotFound {
                subject: subject.to_string(),
            })
    }

    fn view(&self, subject: &str, version: u32, entry: Version) -> VersionView {
        let schema = &self.schemas[&entry.id];
        VersionView {
            subject: subject.to_string(),
            version,
            id: entry.id,
            schema_type: schema.schema_type,
            schema: schema.canonical.clone(),
            references: schema.references.clone(),
        }
    }

    /// The ids each subject's versions use, soft-deleted versions included (their ids still
    /// resolve, so consumers can still read records framed with them): what broker-side
    /// schema validation accepts for a subject.
    pub fn subject_ids(&self) -> HashMap<String, HashSet<u32>> {
        self.subjects
            .iter()
            .filter(|(_, entry)| !entry.versions.is_empty())
            .map(|(name, entry)| {
                let ids = entry.versions.values().map(|version| version.id).collect();
                (name.clone(), ids)
            })
            .collect()
    }

    /// The record names of every schema some subject version uses, by id (for broker-side
    /// validation with RecordNameStrategy).
    pub fn record_names(&self) -> HashMap<u32, super::RecordNames> {
        self.subjects
            .values()
            .flat_map(|entry| entry.versions.values().map(|version| version.id))
            .filter_map(|id| Some((id, self.schemas.get(&id)?.record_names())))
            .collect()
    }

    /// Subjects with a live version (or a soft-deleted one, with `include_deleted`).
    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, entry)| {
                entry
                    .versions
                    .values()
                    .any(|v| include_deleted || !v.deleted)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        let versions: Vec<u32> = self
            .subject(subject)?
            .versions
            .iter()
            .filter(|(_, v)| include_deleted || !v.deleted)
            .map(|(number, _)| *number)
            .collect();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound {
                subject: subject.to_string(),
            });
        }
        Ok(versions)
    }

    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<VersionView, RegistryError> {
        let entry = self.subject(subject)?;
        let found = match spec {
            VersionSpec::Latest => entry
                .versions
                .iter()
                .rev()
                .find(|(_, v)| include_deleted || !v.deleted),
            VersionSpec::Number(number) => entry
                .versions
                .get_key_value(&number)
                .filter(|(_, v)| include_deleted || !v.deleted),
        };
        match found {
            Some((number, v)) => Ok(self.view(subject, *number, *v)),
            None if spec == VersionSpec::Latest => Err(RegistryError::SubjectNotFound {
                subject: subject.to_string(),
            }),
            None => Err(RegistryError::VersionNotFound {
                version: match spec {
                    VersionSpec::Number(number) => number.to_string(),
                    VersionSpec::Latest => "latest".to_string(),
                },
            }),
        }
    }

    /// The schema of an id that some version still uses.
    pub fn schema_by_id(&self, id: u32) -> Result<ParsedSchema, RegistryError> {
        if self.uses_of(id).next().is_none() {
            return Err(RegistryError::SchemaNotFound {
                what: id.to_string(),
            });
        }
        let schema = &self.schemas[&id];
        Ok(schema.clone())
    }

    fn uses_of(&self, id: u32) -> impl Iterator<Item = (&String, u32, Version)> {
        self.subjects.iter().flat_map(move |(name, entry)| {
            entry
                .versions
                .iter()
                .filter(move |(_, v)| v.id == id)
                .map(move |(number, v)| (name, *number, *v))
        })
    }

    /// (subject, version) pairs using `id`, live ones (and soft-deleted with `include_deleted`).
    pub fn versions_of_id(
        &self,
        id: u32,
        include_deleted: bool,
    ) -> Result<Vec<(String, u32)>, RegistryError> {
        let uses: Vec<(String, u32)> = self
            .uses_of(id)
            .filter(|(_, _, v)| include_deleted || !v.deleted)
            .map(|(name, number, _)| (name.clone(), number))
            .collect();
        if uses.is_empty() {
            return Err(RegistryError::SchemaNotFound {
                what: id.to_string(),
            });
        }
        Ok(uses)
    }

    /// The version of `subject` whose schema is `schema` (`POST /subjects/{s}`).
    pub fn lookup(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        include_deleted: bool,
    ) -> Result<VersionView, RegistryError> {
        let entry = self.subject(subject)?;
        let id = self
            .ids
            .get(&(schema.schema_type, schema.identity().to_string()));
        entry
            .versions
            .iter()
            .rev()
            .find(|(_, v)| Some(&v.id) == id && (include_deleted || !v.deleted))
            .map(|(number, v)| self.view(subject, *number, *v))
            .ok_or_else(|| RegistryError::SchemaNotFound {
                what: format!("for subject '{subject}'"),
            })
    }

    /// The level a subject runs with: its own, else the global one, else BACKWARD.
    pub fn effective_level(&self, subject: Option<&str>) -> Level {
        subject
            .and_then(|subject| self.subjects.get(subject))
            .and_then(|entry| entry.level)
            .or(self.global_level)
            .unwrap_or_default()
    }

    /// A subject's own level (`GET /config/{s}`), or the global one when `default_to_global`.
    pub fn level(
        &self,
        subject: Option<&str>,
        default_to_global: bool,
    ) -> Result<Level, RegistryError> {
        match subject {
            None => Ok(self.effective_level(None)),
            Some(name) => match self.subjects.get(name).and_then(|entry| entry.level) {
                Some(level) => Ok(level),
                None if default_to_global => Ok(self.effective_level(None)),
                None => Err(RegistryError::SubjectLevelNotConfigured {
                    subject: name.to_string(),
                }),
            },
        }
    }

    fn live_schemas(&self, entry: &Subject) -> Vec<&ParsedSchema> {
        entry
            .versions
            .values()
            .filter(|v| !v.deleted)
            .map(|v| &self.schemas[&v.id])
            .collect()
    }

    /// Why `schema` may not be registered under `subject` now; empty when it may.
    pub fn violations(&self, subject: &str, schema: &ParsedSchema) -> Vec<String> {
        let Some(entry) = self.subjects.get(subject) else {
            return Vec::new();
        };
        self.effective_level(Some(subject))
            .violations(schema, &self.live_schemas(entry))
    }

    /// `POST /compatibility/subjects/{s}/versions/{v}`: the messages (empty: compatible)
    /// against one version, or against what the level checks for `latest`.
    pub fn check(
        &self,
        subject: &str,
        spec: VersionSpec,
        schema: &ParsedSchema,
    ) -> Result<Vec<String>, RegistryError> {
        let entry = self.subject(subject)?;
        let level = self.effective_level(Some(subject));
        match spec {
            VersionSpec::Latest => Ok(level.violations(schema, &self.live_schemas(entry))),
            VersionSpec::Number(_) => {
                let view = self.version(subject, spec, false)?;
                Ok(level.violations(schema, &[&self.schemas[&view.id]]))
            }
        }
    }

    /// `POST /subjects/{s}/versions`.
    pub fn plan_register(
        &self,
        subject: &str,
        schema: &ParsedSchema,
    ) -> Result<Registration, RegistryError> {
        validate_subject(subject)?;
        if let Ok(found) = self.lookup(subject, schema, false) {
            return Ok(Registration::Existing { id: found.id });
        }
        let messages = self.violations(subject, schema);
        if !messages.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_string(),
                messages,
            });
        }
        let id = match self
            .ids
            .get(&(schema.schema_type, schema.identity().to_string()))
        {
            Some(id) => *id,
            None => self.highest_id + 1,
        };
        let version = self
            .subjects
            .get(subject)
            .and_then(|entry| entry.versions.keys().next_back())
            .map_or(1, |newest| newest + 1);
        let record = records::schema_record(&SchemaValue {
            subject: subject.to_string(),
            version,
            id,
            schema_type: schema.schema_type.field().map(str::to_string),
            schema: schema.canonical.clone(),
            references: schema.references.clone(),
            deleted: false,
        });
        Ok(Registration::Append {
            id,
            version,
            record,
        })
    }

    fn deletion_record(
        &self,
        subject: &str,
        version: u32,
        id: u32,
        permanent: bool,
    ) -> SchemaRecord {
        if permanent {
            return records::schema_removal(subject, version);
        }
        let schema = &self.schemas[&id];
        records::schema_record(&SchemaValue {
            subject: subject.to_string(),
            version,
            id,
            schema_type: schema.schema_type.field().map(str::to_string),
            schema: schema.canonical.clone(),
            references: schema.references.clone(),
            deleted: true,
        })
    }

    /// `DELETE /subjects/{s}`: the versions deleted and the records that delete them.
    pub fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<u32>, Vec<SchemaRecord>), RegistryError> {
        let entry = self.subject(subject)?;
        let live: Vec<(u32, Version)> = entry
            .versions
            .iter()
            .filter(|(_, v)| !v.deleted)
            .map(|(n, v)| (*n, *v))
            .collect();
        if permanent && !live.is_empty() {
            return Err(RegistryError::SubjectNotSoftDeleted {
                subject: subject.to_string(),
            });
        }
        if !permanent && live.is_empty() {
            return Err(RegistryError::SubjectSoftDeleted {
                subject: subject.to_string(),
            });
        }
        let chosen: Vec<(u32, Version)> = if permanent {
            entry.versions.iter().map(|(n, v)| (*n, *v)).collect()
        } else {
            live
        };
        for (number, _) in &chosen {
            self.not_referenced(subject, *number, permanent)?;
        }
        let mut records: Vec<SchemaRecord> = chosen
            .iter()
            .map(|(n, v)| self.deletion_record(subject, *n, v.id, permanent))
            .collect();
        if permanent {
            records.push(records::id_high_water_record(self.highest_id));
        }
        Ok((chosen.iter().map(|(n, _)| *n).collect(), records))
    }

    /// `DELETE /subjects/{s}/versions/{v}`: the version deleted and the records that delete
    /// it (a permanent delete also records the id high water).
    pub fn plan_delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<(u32, Vec<SchemaRecord>), RegistryError> {
        let entry = self.subject(subject)?;
        let found = match spec {
            VersionSpec::Latest => entry
                .versions
                .iter()
                .rev()
                .find(|(_, v)| permanent || !v.deleted),
            VersionSpec::Number(number) => entry.versions.get_key_value(&number),
        };
        let Some((number, v)) = found else {
            return Err(RegistryError::VersionNotFound {
                version: match spec {
                    VersionSpec::Number(number) => number.to_string(),
                    VersionSpec::Latest => "latest".to_string(),
                },
            });
        };
        if permanent && !v.deleted {
            return Err(RegistryError::VersionNotSoftDeleted {
                subject: subject.to_string(),
                version: *number,
            });
        }
        if !permanent && v.deleted {
            return Err(RegistryError::VersionSoftDeleted {
                subject: subject.to_string(),
                version: *number,
            });
        }
        self.not_referenced(subject, *number, permanent)?;
        let mut records = vec![self.deletion_record(subject, *number, v.id, permanent)];
        if permanent {
            records.push(records::id_high_water_record(self.highest_id));
        }
        Ok((*number, records))
    }

    /// `PUT /config[/{s}]`.
    pub fn plan_set_level(
        &self,
        subject: Option<&str>,
        given: &str,
    ) -> Result<(Level, SchemaRecord), RegistryError> {
        if let Some(subject) = subject {
            validate_subject(subject)?;
        }
        let level = Level::parse(given).ok_or_else(|| RegistryError::InvalidLevel {
            given: given.chars().take(64).collect(),
        })?;
        Ok((level, records::config_record(subject, Some(level))))
    }

    /// `DELETE /config[/{s}]`: the level it had and the record that removes it.
    pub fn plan_delete_level(
        &self,
        subject: Option<&str>,
    ) -> Result<(Level, SchemaRecord), RegistryError> {
        let before = match subject {
            None => self.effective_level(None),
            Some(name) => {
                self.level(Some(name), false)
                    .map_err(|_| RegistryError::SubjectNotFound {
                        subject: name.to_string(),
                    })?
            }
        };
        Ok((before, records::config_record(subject, None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str =
        r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"}]}"#;
    const V2: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int","default":0}]}"#;
    const V2_REQUIRED: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int"}]}"#;

    fn parsed(text: &str) -> ParsedSchema {
        Registry::default()
            .parse(&SchemaRequest {
                schema: text.to_string(),
                ..SchemaRequest::default()
            })
            .unwrap()
    }

    fn request(schema_type: &str, text: &str, references: Vec<Reference>) -> SchemaRequest {
        SchemaRequest {
            schema: text.to_string(),
            schema_type: Some(schema_type.to_string()),
            references,
        }
    }

    /// Plans a registration and applies its record, as the node does through the log.
    fn register(registry: &mut Registry, subject: &str, text: &str) -> Result<u32, RegistryError> {
        register_parsed(registry, subject, &parsed(text))
    }

    /// Plans the registration of a parsed schema and applies its record.
    fn register_parsed(
        registry: &mut Registry,
        subject: &str,
        schema: &ParsedSchema,
    ) -> Result<u32, RegistryError> {
        match registry.plan_register(subject, schema)? {
            Registration::Existing { id } => Ok(id),
            Registration::Append { id, record, .. } => {
                registry
                    .apply(Some(&record.key), record.value.as_deref())
                    .unwrap();
                Ok(id)
            }
        }
    }

    fn apply_all(registry: &mut Registry, records: &[SchemaRecord]) {
        for record in records {
            registry
                .apply(Some(&record.key), record.value.as_deref())
                .unwrap();
        }
    }

    #[test]
    fn the_same_schema_keeps_its_id_within_and_across_subjects() {
        let mut registry = Registry::default();
        assert_eq!(register(&mut registry, "a", V1), Ok(1));
        assert_eq!(register(&mut registry, "a", V1), Ok(1));
        assert_eq!(registry.versions("a", false), Ok(vec![1]));
        assert_eq!(register(&mut registry, "b", V1), Ok(1));
        assert_eq!(register(&mut registry, "a", V2), Ok(2));
        assert_eq!(registry.versions("a", false), Ok(vec![1, 2]));
        assert_eq!(registry.versions_of_id(1, false).unwrap().len(), 2);
        assert_eq!(registry.subjects(false), vec!["a", "b"]);
    }

    #[test]
    fn an_incompatible_schema_is_refused_with_409_and_changes_nothing() {
        let mut registry = Registry::default();
        register(&mut registry, "a", V1).unwrap();
        let error = register(&mut registry, "a", V2_REQUIRED).unwrap_err();
        assert_eq!((error.http_status(), error.error_code()), (409, 409));
        assert_eq!(registry.versions("a", false), Ok(vec![1]));
        // NONE lets it in.
        let (_, record) = registry.plan_set_level(Some("a"), "none").unwrap();
        apply_all(&mut registry, &[record]);
        assert_eq!(register(&mut registry, "a", V2_REQUIRED), Ok(2));
    }

    #[test]
    fn racing_writers_are_settled_at_apply_first_committed_wins() {
        let mut registry = Registry::default();
        let first = registry.plan_register("a", &parsed(V1)).unwrap();
        let second = registry.plan_register("b", &parsed(V2)).unwrap();
        // Both planned id 1 from the same state.
        let (Registration::Append { record: r1, .. }, Registration::Append { record: r2, id, .. }) =
            (first, second)
        else {
            panic!("both append");
        };
        assert_eq!(id, 1);
        registry.apply(Some(&r1.key), r1.value.as_deref()).unwrap();
        assert!(registry.apply(Some(&r2.key), r2.value.as_deref()).is_err());
        assert_eq!(registry.ignored(), 1);
        assert!(registry.subjects(false) == vec!["a"]);
        // The loser plans again and gets the next id.
        assert_eq!(register(&mut registry, "b", V2), Ok(2));
    }

    #[test]
    fn a_version_is_never_given_twice() {
        let mut registry = Registry::default();
        register(&mut registry, "a", V1).unwrap();
        let stale = records::schema_record(&SchemaValue {
            subject: "a".into(),
            version: 1,
            id: 9,
            schema_type: None,
            schema: V2.into(),
            references: Vec::new(),
            deleted: false,
        });
        assert!(registry
            .apply(Some(&stale.key), stale.value.as_deref())
            .is_err());
        assert_eq!(
            registry
                .version("a", VersionSpec::Latest, false)
                .unwrap()
                .id,
            1
        );
    }

    #[test]
    fn deletes_are_soft_first_then_permanent_and_ids_are_not_reused() {
        let mut registry = Registry::default();
        register(&mut registry, "a", V1).unwrap();
        register(&mut registry, "a", V2).unwrap();
        assert_eq!(
            registry
                .plan_delete_subject("a", true)
                .unwrap_err()
                .error_code(),
            40405
        );
        let (versions, soft) = registry.plan_delete_subject("a", false).unwrap();
        assert_eq!(versions, vec![1, 2]);
        apply_all(&mut registry, &soft);
        assert!(registry.subjects(false).is_empty());
        assert_eq!(registry.subjects(true), vec!["a"]);
        assert_eq!(
            registry
                .version("a", VersionSpec::Number(1), false)
                .unwrap_err()
                .error_code(),
            40402
        );
        assert_eq!(
            registry
                .version("a", VersionSpec::Number(1), true)
                .unwrap()
                .id,
            1
        );
        let (_, hard) = registry.plan_delete_subject("a", true).unwrap();
        apply_all(&mut registry, &hard);
        assert_eq!(
            registry.versions("a", true).unwrap_err().error_code(),
            40401
        );
        assert_eq!(registry.schema_by_id(1).unwrap_err().error_code(), 40403);
        // A new schema gets a new id; a permanently deleted one is forgotten and gets a new
        // id too, never its old one.
        let v3 = r#"{"type":"record","name":"Other","fields":[]}"#;
        assert_eq!(register(&mut registry, "b", v3), Ok(3));
        assert_eq!(register(&mut registry, "c", V1), Ok(4));
    }

    /// What compaction keeps of a log: the newest record per key, in offset order, without
    /// tombstones (their `delete.retention.ms` passed).
    fn compacted(log: &[SchemaRecord]) -> Vec<SchemaRecord> {
        let newest: HashMap<&[u8], usize> = log
            .iter()
            .enumerate()
            .map(|(offset, record)| (record.key.as_slice(), offset))
            .collect();
        log.iter()
            .enumerate()
            .filter(|(offset, record)| {
                newest[record.key.as_slice()] == *offset && record.value.is_some()
            })
            .map(|(_, record)| record.clone())
            .collect()
    }

    /// Plans with `plan`, appends its records to `log` and applies them.
    fn commit(registry: &mut Registry, log: &mut Vec<SchemaRecord>, records: Vec<SchemaRecord>) {
        for record in records {
            registry
                .apply(Some(&record.key), record.value.as_deref())
                .unwrap();
            log.push(record);
        }
    }

    fn register_logged(
        registry: &mut Registry,
        log: &mut Vec<SchemaRecord>,
        subject: &str,
        text: &str,
    ) -> u32 {
        match registry.plan_register(subject, &parsed(text)).unwrap() {
            Registration::Existing { id } => id,
            Registration::Append { id, record, .. } => {
                commit(registry, log, vec![record]);
                id
            }
        }
    }

    /// The highest ids are hard-deleted and compaction cleans every record of them away: a
    /// registry replayed from the compacted log still gives a higher id, decides the next
    /// registration as the registry that saw everything does, and the subject stays gone.
    #[test]
    fn ids_never_go_back_when_compaction_cleans_away_deleted_schemas() {
        let mut registry = Registry::default();
        let mut log = Vec::new();
        let other = r#"{"type":"record","name":"Other","fields":[]}"#;
        assert_eq!(register_logged(&mut registry, &mut log, "keep", other), 1);
        assert_eq!(register_logged(&mut registry, &mut log, "gone", V1), 2);
        assert_eq!(register_logged(&mut registry, &mut log, "gone", V2), 3);
        let (_, soft) = registry.plan_delete_subject("gone", false).unwrap();
        commit(&mut registry, &mut log, soft);
        let (_, hard) = registry.plan_delete_subject("gone", true).unwrap();
        assert!(hard.iter().filter(|record| record.value.is_none()).count() == 2);
        commit(&mut registry, &mut log, hard);
        let mut replayed = Registry::default();
        for record in compacted(&log) {
            replayed
                .apply(Some(&record.key), record.value.as_deref())
                .unwrap();
        }
        assert!(compacted(&log).len() < log.len());
        assert_eq!(replayed.highest_id(), 3);
        assert_eq!(replayed.subjects(true), vec!["keep"]);
        assert_eq!(replayed.subject_ids(), registry.subject_ids());
        // Both plan the same record for a deleted schema registered again: a new id.
        let again = registry.plan_register("new", &parsed(V1)).unwrap();
        assert_eq!(replayed.plan_register("new", &parsed(V1)).unwrap(), again);
        assert!(
            matches!(again, Registration::Append { id: 4, .. }),
            "{again:?}"
        );
        // Without the high-water record the replayed registry would give id 2 again.
        let mut without = Registry::default();
        for record in compacted(&log) {
            if !record.key.starts_with(br#"{"keytype":"ID_HIGH_WATER""#) {
                without
                    .apply(Some(&record.key), record.value.as_deref())
                    .unwrap();
            }
        }
        assert!(matches!(
            without.plan_register("new", &parsed(V1)).unwrap(),
            Registration::Append { id: 2, .. }
        ));
    }

    /// Two permanent deletes planned from different states: the staler high water committed
    /// last is noticed and a repair record restores the highest.
    #[test]
    fn a_stale_high_water_committed_last_is_repaired() {
        let mut registry = Registry::default();
        let mut log = Vec::new();
        register_logged(&mut registry, &mut log, "a", V1);
        let (_, soft) = registry.plan_delete_subject("a", false).unwrap();
        commit(&mut registry, &mut log, soft);
        let (_, stale) = registry.plan_delete_subject("a", true).unwrap();
        let other = r#"{"type":"record","name":"Other","fields":[]}"#;
        register_logged(&mut registry, &mut log, "b", other);
        let (_, soft) = registry.plan_delete_subject("b", false).unwrap();
        commit(&mut registry, &mut log, soft);
        let (_, fresh) = registry.plan_delete_subject("b", true).unwrap();
        commit(&mut registry, &mut log, fresh);
        assert_eq!(registry.high_water_repair(), None);
        // The stale delete (high water 1) lands after the fresh one (high water 2).
        commit(&mut registry, &mut log, stale);
        let repair = registry.high_water_repair().expect("a repair");
        assert_eq!(repair, records::id_high_water_record(2));
        commit(&mut registry, &mut log, vec![repair]);
        assert_eq!(registry.high_water_repair(), None);
        let mut replayed = Registry::default();
        for record in compacted(&log) {
            replayed
                .apply(Some(&record.key), record.value.as_deref())
                .unwrap();
        }
        assert_eq!(replayed.highest_id(), 2);
    }

    #[test]
    fn deleting_one_version() {
        let mut registry = Registry::default();
        register(&mut registry, "a", V1).unwrap();
        register(&mut registry, "a", V2).unwrap();
        let (number, record) = registry
            .plan_delete_version("a", VersionSpec::Latest, false)
            .unwrap();
        assert_eq!(number, 2);
        apply_all(&mut registry, &record);
        assert_eq!(
            registry
                .version("a", VersionSpec::Latest, false)
                .unwrap()
                .version,
            1
        );
        assert_eq!(
            registry
                .plan_delete_version("a", VersionSpec::Number(2), false)
                .unwrap_err()
                .error_code(),
            40406
        );
        assert_eq!(
            registry
                .plan_delete_version("a", VersionSpec::Number(1), true)
                .unwrap_err()
                .error_code(),
            40407
        );
        assert_eq!(
            registry
                .plan_delete_version("a", VersionSpec::Number(5), false)
                .unwrap_err()
                .error_code(),
            40402
        );
        // Re-registering the soft-deleted schema makes a new version with the same id.
        assert_eq!(register(&mut registry, "a", V2), Ok(2));
        assert_eq!(registry.versions("a", false), Ok(vec![1, 3]));
    }

    #[test]
    fn levels_are_global_or_per_subject() {
        let mut registry = Registry::default();
        assert_eq!(registry.level(None, false), Ok(Level::Backward));
        assert_eq!(
            registry.level(Some("a"), false).unwrap_err().error_code(),
            40408
        );
        assert_eq!(registry.level(Some("a"), true), Ok(Level::Backward));
        let (_, global) = registry.plan_set_level(None, "FULL").unwrap();
        let (_, subject) = registry.plan_set_level(Some("a"), "NONE").unwrap();
        apply_all(&mut registry, &[global, subject]);
        assert_eq!(registry.effective_level(Some("a")), Level::None);
        assert_eq!(registry.effective_level(Some("b")), Level::Full);
        let (before, removal) = registry.plan_delete_level(Some("a")).unwrap();
        assert_eq!(before, Level::None);
        apply_all(&mut registry, &[removal]);
        assert_eq!(registry.effective_level(Some("a")), Level::Full);
        assert_eq!(
            registry
                .plan_set_level(None, "SIDEWAYS")
                .unwrap_err()
                .error_code(),
            42203
        );
    }

    #[test]
    fn bad_input_is_typed_and_foreign_records_change_nothing() {
        let mut registry = Registry::default();
        assert_eq!(
            registry
                .parse(&request("AVRO", "{", Vec::new()))
                .unwrap_err()
                .error_code(),
            42201
        );
        assert_eq!(
            registry
                .parse(&request("JSON", "[]", Vec::new()))
                .unwrap_err()
                .error_code(),
            42201
        );
        assert_eq!(
            registry
                .parse(&request("PROTOBUF", "message {", Vec::new()))
                .unwrap_err()
                .error_code(),
            42201
        );
        assert_eq!(VersionSpec::parse("0").unwrap_err().error_code(), 42202);
        assert_eq!(VersionSpec::parse("x").unwrap_err().error_code(), 42202);
        assert_eq!(VersionSpec::parse("-1"), Ok(VersionSpec::Latest));
        assert_eq!(
            registry
                .plan_register("", &parsed(V1))
                .unwrap_err()
                .error_code(),
            42208
        );
        assert!(registry.apply(Some(b"garbage"), Some(b"garbage")).is_err());
        let key = br#"{"keytype":"SCHEMA","subject":"a","version":1,"magic":1}"#;
        let bad_schema = br#"{"subject":"a","version":1,"id":1,"schema":"{"}"#;
        assert!(registry.apply(Some(key), Some(bad_schema)).is_err());
        assert!(registry.subjects(true).is_empty());
        assert_eq!(
            registry
                .lookup("a", &parsed(V1), false)
                .unwrap_err()
                .error_code(),
            40401
        );
    }

    /// Registers a parsed request, applying its record as the node does through the log.
    fn register_request(
        registry: &mut Registry,
        subject: &str,
        request: &SchemaRequest,
    ) -> Result<u32, RegistryError> {
        let schema = registry.parse(request)?;
        register_parsed(registry, subject, &schema)
    }

    const COMMON: &str = "syntax = \"proto3\";\npackage common;\nmessage Id { string value = 1; }";
    const ORDER: &str = "syntax = \"proto3\";\nimport \"common.proto\";\nmessage Order { common.Id id = 1; int64 amount = 2; }";

    #[test]
    fn protobuf_references_resolve_against_registered_subjects_and_block_deletes() {
        let mut registry = Registry::default();
        let common = register_request(
            &mut registry,
            "common",
            &request("PROTOBUF", COMMON, Vec::new()),
        )
        .unwrap();
        let reference = Reference {
            name: "common.proto".to_string(),
            subject: "common".to_string(),
            version: 1,
        };
        // Without its reference the import does not resolve: 42201, nothing stored.
        assert_eq!(
            register_request(
                &mut registry,
                "orders",
                &request("PROTOBUF", ORDER, Vec::new())
            )
            .unwrap_err()
            .error_code(),
            42201
        );
        let missing = Reference {
            version: 7,
            ..reference.clone()
        };
        assert_eq!(
            register_request(
                &mut registry,
                "orders",
                &request("PROTOBUF", ORDER, vec![missing])
            )
            .unwrap_err()
            .error_code(),
            42201
        );
        let order = register_request(
            &mut registry,
            "orders",
            &request("PROTOBUF", ORDER, vec![reference.clone()]),
        )
        .unwrap();
        assert_ne!(order, common);
        // Reformatted text: the same schema, the same id; the view carries the reference.
        let spaced = ORDER.replace("; ", ";\n  ");
        assert_eq!(
            register_request(
                &mut registry,
                "orders",
                &request("PROTOBUF", &spaced, vec![reference.clone()])
            ),
            Ok(order)
        );
        let view = registry
            .version("orders", VersionSpec::Latest, false)
            .unwrap();
        assert_eq!(
            (view.schema_type, view.references),
            (SchemaType::Protobuf, vec![reference])
        );
        assert!(registry.schema_by_id(order).unwrap().serialized().is_some());
        // The referenced version cannot be deleted while `orders` uses it.
        assert_eq!(
            registry
                .plan_delete_subject("common", false)
                .unwrap_err()
                .error_code(),
            42206
        );
        // A field number reused with another type is refused under BACKWARD.
        let reused = ORDER.replace("int64 amount", "string amount");
        let references = registry
            .version("orders", VersionSpec::Latest, false)
            .unwrap()
            .references;
        let error = register_request(
            &mut registry,
            "orders",
            &request("PROTOBUF", &reused, references),
        )
        .unwrap_err();
        assert_eq!(error.error_code(), 409, "{error}");
        // A replayed registry (every record again, in order) resolves the same references.
        let mut replayed = Registry::default();
        for subject in ["common", "orders"] {
            let view = registry
                .version(subject, VersionSpec::Latest, false)
                .unwrap();
            let record = records::schema_record(&SchemaValue {
                subject: subject.to_string(),
                version: view.version,
                id: view.id,
                schema_type: view.schema_type.field().map(str::to_string),
                schema: view.schema,
                references: view.references,
                deleted: false,
            });
            replayed
                .apply(Some(&record.key), record.value.as_deref())
                .unwrap();
        }
        assert_eq!(replayed.versions("orders", false), Ok(vec![1]));
        // Soft-deleting `orders` frees `common` for a soft delete, not for a permanent one.
        let (_, soft) = registry.plan_delete_subject("orders", false).unwrap();
        apply_all(&mut registry, &soft);
        let (_, soft_common) = registry.plan_delete_subject("common", false).unwrap();
        apply_all(&mut registry, &soft_common);
        assert_eq!(
            registry
                .plan_delete_subject("common", true)
                .unwrap_err()
                .error_code(),
            42206
        );
        let (_, hard) = registry.plan_delete_subject("orders", true).unwrap();
        apply_all(&mut registry, &hard);
        assert!(registry.plan_delete_subject("common", true).is_ok());
    }

    #[test]
    fn json_schemas_evolve_under_backward() {
        let mut registry = Registry::default();
        let closed = r#"{"type":"object","properties":{"name":{"type":"string"}},"additionalProperties":false}"#;
        let added = r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"additionalProperties":false}"#;
        let required = r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["age"],"additionalProperties":false}"#;
        let first = register_request(
            &mut registry,
            "people",
            &request("JSON", closed, Vec::new()),
        )
        .unwrap();
        assert_eq!(
            register_request(
                &mut registry,
                "people",
                &request("JSON", required, Vec::new())
            )
            .unwrap_err()
            .error_code(),
            409
        );
        let second =
            register_request(&mut registry, "people", &request("JSON", added, Vec::new())).unwrap();
        assert_ne!(first, second);
        // Another key order: the same schema.
        let shuffled = r#"{"additionalProperties":false,"properties":{"age":{"type":"integer"},"name":{"type":"string"}},"type":"object"}"#;
        assert_eq!(
            register_request(
                &mut registry,
                "people",
                &request("JSON", shuffled, Vec::new())
            ),
            Ok(second)
        );
        assert_eq!(registry.versions("people", false), Ok(vec![1, 2]));
        // Types do not share ids even for equal text.
        assert_eq!(
            registry
                .version("people", VersionSpec::Latest, false)
                .unwrap()
                .schema_type,
            SchemaType::Json
        );
    }
}
