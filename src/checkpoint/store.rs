//! The checkpoint store: objects under a URL, `file://` or `s3://`, reached
//! from synchronous threads (a worker, its shard uploads).
//!
//! Every operation is retried with backoff until it succeeds: while the store
//! is away the thread using it blocks here, its epoch is not committed, and
//! the source stops advancing behind it. Objects are written in parts and appear only
//! when complete (a rename on a file system, a completed multipart upload on
//! S3), so a crash mid-write leaves no object, only an abandoned upload.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::backoff;
use crate::fault::{self, Fault};

/// Objects are uploaded in parts of this size (S3 wants at least 5 MiB).
const PART_BYTES: usize = 8 << 20;

/// Why the store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL names no supported store.
    #[error("checkpoint.url {url:?}: expected file://PATH or s3://BUCKET[/PREFIX]")]
    Scheme {
        /// The URL.
        url: String,
    },
    /// The store rejected its configuration.
    #[error("checkpoint.url {url:?}: {source}")]
    Store {
        /// The URL.
        url: String,
        /// What the store said.
        source: object_store::Error,
    },
    /// A local directory cannot be created.
    #[error("checkpoint.url {url:?}: cannot create {path}: {source}")]
    Directory {
        /// The URL.
        url: String,
        /// The directory.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
}

/// A checkpoint store.
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    local_root: Option<std::path::PathBuf>,
    runtime: tokio::runtime::Runtime,
}

impl Store {
    /// Opens the store at `url`, under the folder `within` (one per pipeline,
    /// so that pipelines can share a URL). S3 credentials, region and endpoint
    /// come from the usual `AWS_*` environment variables.
    pub fn open(url: &str, within: &str) -> Result<Store, OpenError> {
        let runtime = crate::blocking_runtime();
        if let Some(path) = url.strip_prefix("file://") {
            let path = std::path::Path::new(path).join(within);
            let directory = |source| OpenError::Directory { url: url.into(), path: path.display().to_string(), source };
            std::fs::create_dir_all(&path).map_err(directory)?;
            let root = std::fs::canonicalize(&path).map_err(directory)?;
            let objects = LocalFileSystem::new_with_prefix(&root)
                .map_err(|source| OpenError::Store { url: url.into(), source })?;
            return Ok(Store {
                objects: Arc::new(objects),
                prefix: Path::default(),
                url: url.into(),
                local_root: Some(root),
                runtime,
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(OpenError::Scheme { url: url.into() });
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(OpenError::Scheme { url: url.into() });
        }
        let objects = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|source| OpenError::Store { url: url.into(), source })?;
        let prefix = Path::from(prefix).join(within);
        Ok(Store { objects: Arc::new(objects), prefix, url: url.into(), local_root: None, runtime })
    }

    /// The same store, for another thread: each drives a runtime of its own.
    pub fn another(&self) -> Store {
        Store {
            objects: Arc::clone(&self.objects),
            prefix: self.prefix.clone(),
            url: self.url.clone(),
            local_root: self.local_root.clone(),
            runtime: crate::blocking_runtime(),
        }
    }

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in name.split('/') {
            path = path.clone().join(part);
        }
        path
    }

    fn name(&self, path: &Path) -> String {
        let full = path.as_ref();
        let prefix = self.prefix.as_ref();
        full.strip_prefix(prefix).map_or(full, |rest| rest.trim_start_matches('/')).to_owned()
    }

    /// Runs `attempt` until it succeeds, backing off between failures.
    fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut(Arc<dyn ObjectStore>) -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        backoff::retry("checkpoint store", what, "", || {
            self.runtime.block_on(attempt(Arc::clone(&self.objects))).map_err(|e| format!("{}: {e}", self.url))
        })
    }

    /// Writes `bytes` to `name`, replacing it.
    pub fn put(&self, name: &str, bytes: Vec<u8>, mid_write: Option<Fault>) {
        self.put_pieces(name, vec![Bytes::from(bytes)], mid_write);
    }

    /// Writes the concatenation of `pieces` to `name`, replacing it. The
    /// pieces are uploaded from where they are, never copied into one buffer.
    /// `mid_write` is the fault point reached after the first part, before
    /// the object is complete.
    pub fn put_pieces(&self, name: &str, pieces: Vec<Bytes>, mid_write: Option<Fault>) {
        let path = self.path(name);
        let what = format!("write {name}");
        let parts = upload_parts(pieces);
        self.retry(&what, |objects| {
            let (path, parts) = (path.clone(), parts.clone());
            async move {
                let mut upload = objects.put_multipart(&path).await?;
                for (index, part) in parts.into_iter().enumerate() {
                    upload.put_part(part).await?;
                    if let (0, Some(fault)) = (index, mid_write) {
                        fault::point(fault);
                    }
                }
                upload.complete().await.map(|_| ())
            }
        });
    }

    /// Reads `name`; `None` when it does not exist.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.path(name);
        self.retry(&format!("read {name}"), |objects| {
            let path = path.clone();
            async move {
                match objects.get(&path).await {
                    Ok(result) => Ok(Some(result.bytes().await?.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(error) => Err(error),
                }
            }
        })
    }

    /// Names directly under `directory`: (sub-directories, objects).
    pub fn list(&self, directory: &str) -> (Vec<String>, Vec<String>) {
        let path = self.path(directory);
        let listed = self.retry(&format!("list {directory}"), |objects| {
            let path = path.clone();
            async move { objects.list_with_delimiter(Some(&path)).await }
        });
        let directories = listed.common_prefixes.iter().map(|p| self.name(p)).collect();
        let objects = listed.objects.iter().map(|o| self.name(&o.location)).collect();
        (directories, objects)
    }

    /// Deletes `name` (nothing when it is already gone).
    pub fn delete(&self, name: &str) {
        let path = self.path(name);
        self.retry(&format!("delete {name}"), |objects| {
            let path = path.clone();
            async move {
                match objects.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(error) => Err(error),
                }
            }
        });
    }

    /// Removes uploads a crash left unfinished in a local store (an S3 bucket
    /// expires them with a lifecycle rule for incomplete multipart uploads).
    pub fn remove_abandoned_uploads(&self) {
        let Some(root) = &self.local_root else { return };
        let mut directories = vec![root.clone()];
        while let Some(directory) = directories.pop() {
            let Ok(entries) = std::fs::read_dir(&directory) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    directories.push(path);
                } else if is_staged_upload(&path) {
                    tracing::info!(path = %path.display(), "removing an upload a crash left unfinished");
                    if let Err(error) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), %error, "cannot remove an unfinished upload");
                    }
                }
            }
        }
    }
}

/// A local store stages an upload as `NAME#DIGITS` until it completes.
fn is_staged_upload(path: &std::path::Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.rsplit_once('#').is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// `pieces` cut into upload parts of `PART_BYTES` each but the last (one
/// empty part when there is nothing), each part a list of slices of them.
fn upload_parts(pieces: Vec<Bytes>) -> Vec<PutPayload> {
    let mut parts = Vec::new();
    let mut part: Vec<Bytes> = Vec::new();
    let mut room = PART_BYTES;
    for mut piece in pieces {
        while !piece.is_empty() {
            let slice = piece.split_to(room.min(piece.len()));
            room -= slice.len();
            part.push(slice);
            if room == 0 {
                parts.push(std::mem::take(&mut part).into_iter().collect());
                room = PART_BYTES;
            }
        }
    }
    if !part.is_empty() || parts.is_empty() {
        parts.push(part.into_iter().collect());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_cut_into_full_parts_but_the_last() {
        let piece = |len: usize, byte: u8| Bytes::from(vec![byte; len]);
        let pieces = vec![piece(3, 1), piece(PART_BYTES, 2), piece(0, 3), piece(PART_BYTES + 5, 4)];
        let whole: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        let parts = upload_parts(pieces);
        let sizes: Vec<usize> = parts.iter().map(PutPayload::content_length).collect();
        assert_eq!(sizes, [PART_BYTES, PART_BYTES, 8]);
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().flat_map(|b| b.iter().copied())).collect();
        assert_eq!(joined, whole);
        assert_eq!(upload_parts(Vec::new()).iter().map(PutPayload::content_length).collect::<Vec<_>>(), [0]);
    }
}
