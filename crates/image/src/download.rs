//! Streams a [`Body`] into a file in one pass: a receiving task passes chunks to a writer
//! thread that hashes and writes them, so the network, sha256 and the disk overlap.

use std::io::Write;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::fetch::{Body, FetchError};
use crate::format::SNIFF_LEN;

/// Chunks in flight between the receiver and the writer.
const PIPELINE_DEPTH: usize = 32;

#[derive(Debug)]
pub struct Downloaded {
    pub digest: Digest,
    pub size: u64,
    /// The first [`SNIFF_LEN`] bytes (fewer for a smaller image), for format detection.
    pub head: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("writing the image failed")]
    Write(#[source] std::io::Error),
}

/// Downloads `body` into `file` (flushed to disk before returning).
pub async fn download(mut body: Body, file: std::fs::File) -> Result<Downloaded, DownloadError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(Digest, u64)> {
        let mut file = file;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            file.write_all(&chunk)?;
            size += chunk.len() as u64;
        }
        file.sync_all()?;
        Ok((Digest::from_bytes(hasher.finalize().into()), size))
    });
    let mut head = Vec::with_capacity(SNIFF_LEN);
    let received: Result<(), DownloadError> = async {
        while let Some(chunk) = body.next_chunk().await? {
            if head.len() < SNIFF_LEN {
                let take = (SNIFF_LEN - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            if tx.send(chunk).await.is_err() {
                // The writer stopped: its error says why.
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| DownloadError::Write(std::io::Error::other(e)))?;
    received?;
    let (digest, size) = written.map_err(DownloadError::Write)?;
    Ok(Downloaded { digest, size, head })
}
