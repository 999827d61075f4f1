//! Raw structs -> validated [`super::Config`].
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl ConfigError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ConfigError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub(super) fn parse(_text: &str, origin: &str) -> Result<super::Config, ConfigError> {
    Err(ConfigError::Invalid {
        origin: origin.into(),
        message: "config parsing is not written yet".into(),
    })
}
