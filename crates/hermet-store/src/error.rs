use hermet_core::validate::Invalid;

/// Errors of the store. The first four are answers to the caller (the request was refused);
/// the rest are failures of the system.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The database is unreachable or the pool is exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A transaction lost a race (deadlock, serialization failure) and may be retried.
    #[error("transaction conflict, retry: {}", with_cause(.0))]
    Retry(tokio_postgres::Error),
    #[error("database error: {}", with_cause(.0))]
    Db(tokio_postgres::Error),
    #[error("unexpected row shape: {0}")]
    Decode(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
}

/// A text column whose value the code does not know is a row of unexpected shape.
impl From<hermet_core::rows::UnknownValue> for StoreError {
    fn from(e: hermet_core::rows::UnknownValue) -> Self {
        StoreError::Decode(e.to_string())
    }
}

impl StoreError {
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        StoreError::NotFound {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        StoreError::Forbidden {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        StoreError::Conflict {
            code,
            message: message.into(),
        }
    }
}

/// `tokio_postgres::Error` displays only its kind ("db error"); the server's message (what a
/// dead letter or a log line must say) is its source.
fn with_cause(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        match e.code() {
            Some(c)
                if *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE =>
            {
                StoreError::Retry(e)
            }
            Some(c) if c.code().starts_with("08") || c.code().starts_with("57P") => {
                StoreError::Unavailable(with_cause(&e))
            }
            None if e.is_closed() => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Db(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}
