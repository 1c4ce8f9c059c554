//! Runtime errors of operators, sources and sinks.

use arrow::error::ArrowError;

/// Result alias used by the StreamFlow traits.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error raised while a pipeline runs. Every variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An Arrow compute or format error, with what was being done.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// The Arrow error.
        #[source]
        source: ArrowError,
    },
    /// An I/O error on a named resource (file, socket, ...).
    #[error("{context}: {source}")]
    Io {
        /// The resource and action, e.g. `reading data/bids.jsonl`.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Input that could not be decoded and had nowhere to go.
    #[error("{location}: {message}")]
    Decode {
        /// `file:line` or another position in the input.
        location: String,
        /// Why decoding failed.
        message: String,
    },
    /// An expression failed on a batch.
    #[error("expression `{expr}` failed: {message}")]
    Expression {
        /// The SQL text of the expression.
        expr: String,
        /// The evaluation error.
        message: String,
    },
    /// A stage failed; carries the stage name.
    #[error("stage '{stage}': {source}")]
    Stage {
        /// Stage name.
        stage: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// A downstream or upstream task has gone away (pipeline shutting down).
    #[error("channel closed: {0}")]
    ChannelClosed(String),
    /// Any other failure, described.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an Arrow error with context.
    pub fn arrow(context: impl Into<String>, source: ArrowError) -> Self {
        Error::Arrow {
            context: context.into(),
            source,
        }
    }
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
    /// Attributes the error to a stage (idempotent).
    pub fn in_stage(self, stage: &str) -> Self {
        match self {
            e @ Error::Stage { .. } => e,
            e => Error::Stage {
                stage: stage.to_string(),
                source: Box::new(e),
            },
        }
    }
}

/// An error and its causes as one line, `outer: cause: root cause`; a
/// cause whose text the line already holds is not repeated. Client
/// libraries often keep the telling part (`invalid peer certificate:
/// UnknownIssuer`) in a cause their own message leaves out.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}
