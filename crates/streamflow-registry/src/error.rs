//! The registry's errors, each with the Confluent error code clients expect.

/// What a registry operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 40403.
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 40404: soft-deleting a subject again.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405: hard-deleting a subject that was not soft-deleted first.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40406: soft-deleting a version again.
    #[error(
        "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// 40407: hard-deleting a version that was not soft-deleted first.
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    /// 409.
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", .messages.join(", "))]
    Incompatible {
        /// The subject.
        subject: String,
        /// Why.
        messages: Vec<String>,
    },
    /// 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203.
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive (got '{0}')"
    )]
    InvalidLevel(String),
    /// 42206: deleting a version other schemas refer to.
    #[error("One or more references exist to the schema {{subject={subject},version={version}}}")]
    Referenced {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// 50001.
    #[error("Error in the backend data store: {0}")]
    Store(String),
}

impl RegistryError {
    /// The Confluent error code.
    pub fn code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound(_) => 40402,
            RegistryError::SchemaNotFound(_) => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted { .. } => 40406,
            RegistryError::VersionNotSoftDeleted { .. } => 40407,
            RegistryError::SubjectConfigNotFound(_) => 40408,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidLevel(_) => 42203,
            RegistryError::Referenced { .. } => 42206,
            RegistryError::Store(_) => 50001,
        }
    }

    /// The HTTP status: the code's first three digits.
    pub fn status(&self) -> u16 {
        match self.code() {
            c if c >= 10_000 => (c / 100) as u16,
            c => c as u16,
        }
    }
}

pub(crate) fn store(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Store(e.to_string())
}
