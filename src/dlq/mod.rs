//! `invalidator dlq list|replay`: reading and replaying the dead-letter topic (DESIGN §5).
//! (Being built: see issue 5.)

use tokio_util::sync::CancellationToken;

use crate::cli::{DlqListArgs, DlqReplayArgs};

/// Why a `dlq` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("`invalidator dlq` is not built yet")]
    NotBuilt,
}

pub async fn list(_args: DlqListArgs) -> Result<(), DlqError> {
    Err(DlqError::NotBuilt)
}

pub async fn replay(_args: DlqReplayArgs, _shutdown: CancellationToken) -> Result<(), DlqError> {
    Err(DlqError::NotBuilt)
}
