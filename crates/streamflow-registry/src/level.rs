//! Compatibility levels: which earlier versions a new schema is checked
//! against, and in which direction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::schema::Parsed;

/// A subject's (or the registry's) compatibility level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// Consumers using the new schema can read data written with the
    /// latest one (the default).
    #[default]
    Backward,
    /// … with every earlier one.
    BackwardTransitive,
    /// Consumers using the latest schema can read data written with the new one.
    Forward,
    /// … consumers using any earlier one.
    ForwardTransitive,
    /// Backward and forward, against the latest.
    Full,
    /// Backward and forward, against every earlier one.
    FullTransitive,
    /// No check.
    None,
}

impl Level {
    /// The name the API uses (`BACKWARD`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
            Level::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    /// Why `new` may not follow the `earlier` versions (oldest first, with
    /// their numbers) at this level; nothing when it may. Non-transitive
    /// levels look at the latest only.
    pub fn check(self, new: &Parsed, earlier: &[(u32, &Parsed)]) -> Vec<String> {
        let against = if self.transitive() {
            earlier
        } else {
            earlier.last().map_or(&[][..], std::slice::from_ref)
        };
        let mut out = Vec::new();
        for (version, old) in against.iter().rev() {
            if self.backward() {
                for why in Parsed::can_read(old, new) {
                    out.push(format!(
                        "{self}: cannot read data written with version {version}: {why}"
                    ));
                }
            }
            if self.forward() {
                for why in Parsed::can_read(new, old) {
                    out.push(format!(
                        "{self}: version {version} cannot read data written with it: {why}"
                    ));
                }
            }
        }
        out
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            "NONE" => Level::None,
            _ => return Err(format!("Invalid compatibility level: {s}")),
        })
    }
}
