//! The agent's journal: the state machine's state, replaced atomically (write, fsync,
//! rename, fsync of the directory, through the trust store's `write_atomically`) after
//! every transition, so a power cut leaves either the old or the new state.
//!
//! The crash hook (`OTA_AGENT_CRASH_AT=<step>`) kills the agent right after the named
//! step was journaled, for the crash-safety tests.

use crate::machine::{AgentState, STATE_FORMAT};
use crate::trust_store::{write_atomically, TrustStoreError};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path} is not a readable agent state (format {format}): {reason}")]
    Corrupt {
        path: PathBuf,
        format: u32,
        reason: String,
    },
    #[error(transparent)]
    Write(#[from] TrustStoreError),
}

#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            path: state_dir.join("journal.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journaled state, or `None` on first start.
    pub fn load(&self) -> Result<Option<AgentState>, JournalError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let state: AgentState =
            serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                path: self.path.clone(),
                format: STATE_FORMAT,
                reason: e.to_string(),
            })?;
        if state.format != STATE_FORMAT {
            return Err(JournalError::Corrupt {
                path: self.path.clone(),
                format: state.format,
                reason: format!("this agent reads format {STATE_FORMAT}"),
            });
        }
        Ok(Some(state))
    }

    pub fn save(&self, state: &AgentState) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        write_atomically(&self.path, &bytes)?;
        Ok(())
    }
}

/// Where the crash hook fires: after the step with this name was journaled.
#[derive(Debug, Clone, Default)]
pub struct CrashHook {
    step: Option<String>,
}

impl CrashHook {
    pub const ENV: &'static str = "OTA_AGENT_CRASH_AT";

    pub fn from_env() -> CrashHook {
        CrashHook {
            step: std::env::var(Self::ENV).ok().filter(|s| !s.is_empty()),
        }
    }

    pub fn at(step: &str) -> CrashHook {
        CrashHook {
            step: Some(step.to_owned()),
        }
    }

    pub fn fires_at(&self, step: &str) -> bool {
        self.step.as_deref() == Some(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{AgentState, SlotName};

    #[test]
    fn a_saved_state_loads_back_and_a_torn_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        assert!(
            journal.load().unwrap().is_none(),
            "no journal on first start"
        );
        let state = AgentState::factory(SlotName::B, None);
        journal.save(&state).unwrap();
        assert_eq!(journal.load().unwrap(), Some(state));
        std::fs::write(journal.path(), b"{\"format\":1,\"pha").unwrap();
        assert!(matches!(journal.load(), Err(JournalError::Corrupt { .. })));
    }
}
