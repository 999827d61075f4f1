//! `pgtenant demo`.
//!
//! TEMPORARY stub so that `main.rs` compiles; replaced by the real demo.

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("pgtenant demo is not written yet")]
    NotWritten,
}

/// Runs the demo until Ctrl-C.
pub async fn run() -> Result<(), DemoError> {
    Err(DemoError::NotWritten)
}
