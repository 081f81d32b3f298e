//! The content-addressed image store.
//!
//! Layout under the image directory:
//! - `blobs/sha256/<hex>`: image data, named by its digest, never changed once there;
//! - `tmp/`: downloads in progress. A download becomes a blob only after it is complete,
//!   flushed, checked against a pinned digest and recognised as a disk image, by one rename;
//!   so a crash, a cut connection, a full disk or a mismatch never leaves a visible partial image.
//!
//! Names live in the metadata store (name -> digest). A blob stays while any name or any user
//! (a VM's root disk) refers to it; startup GC removes everything in `tmp/` and unreferenced blobs.

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tracing::{info, warn};
use virtlet_store::{ImageRecord, Store};

use crate::digest::Digest;
use crate::download::{DownloadError, download};
use crate::error::{ImageError, PullCause};
use crate::fetch::{self, location_url};
use crate::format;
use crate::reference::{ImageQuery, ImageRef};
use crate::translation::Translations;

/// Settings of the image store.
#[derive(Debug, Clone)]
pub struct ImageStoreConfig {
    pub image_dir: PathBuf,
    pub translations_dir: PathBuf,
    /// `https` or `http`: prepended to locations without `://`.
    pub download_protocol: String,
}

/// One image as CRI shows it: its content and every name that points to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub digest: Digest,
    pub names: Vec<String>,
    pub size: u64,
    pub format: String,
    pub virtual_size: u64,
    pub source_url: String,
    pub pulled_at_ns: i64,
}

impl ImageInfo {
    /// `sha256:<hex>`.
    pub fn id(&self) -> String {
        self.digest.id()
    }

    /// `name@sha256:<hex>` for each name.
    pub fn repo_digests(&self) -> Vec<String> {
        self.names
            .iter()
            .map(|n| format!("{n}@{}", self.digest.id()))
            .collect()
    }
}

/// What a pull produced.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// `name@sha256:<hex>`, the PullImage answer.
    pub image_ref: String,
    pub digest: Digest,
}

/// Usage of the image store's filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    pub timestamp_ns: i64,
}

/// What a GC pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub temp_files: usize,
    pub blobs: usize,
    pub dangling_names: usize,
}

type SharedPull = Shared<BoxFuture<'static, Result<Pulled, Arc<ImageError>>>>;

pub struct ImageStore {
    config: ImageStoreConfig,
    blobs: PathBuf,
    tmp: PathBuf,
    meta: Arc<Store>,
    /// Serializes decisions about names and blobs (place, remove, acquire, GC).
    placement: Mutex<()>,
    /// Pulls under way, by name (and pinned digest): a second pull joins the first.
    inflight: Mutex<HashMap<String, SharedPull>>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave their data half-changed (the guarded
    // state is on disk and in redb), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// Removes a temporary download unless it was kept.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ImageStore {
    /// Opens the store, creating its directories.
    pub fn open(config: ImageStoreConfig, meta: Arc<Store>) -> Result<ImageStore, ImageError> {
        let blobs = config.image_dir.join("blobs").join("sha256");
        let tmp = config.image_dir.join("tmp");
        for dir in [&blobs, &tmp] {
            std::fs::create_dir_all(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        Ok(ImageStore {
            config,
            blobs,
            tmp,
            meta,
            placement: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ImageStoreConfig {
        &self.config
    }

    /// Where the data of `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Pulls `reference`. Concurrent pulls of the same reference share one download; the
    /// download goes on even if the caller gives up, so the next caller finds it done.
    pub async fn pull(self: &Arc<Self>, reference: &str) -> Result<Pulled, Arc<ImageError>> {
        let image = ImageRef::parse(reference).map_err(|e| Arc::new(e.into()))?;
        let key = match &image.digest {
            Some(d) => image.pinned(d),
            None => image.name.clone(),
        };
        let shared = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(running) => {
                    info!(image = %key, "joining a pull already under way");
                    running.clone()
                }
                None => {
                    let this = Arc::clone(self);
                    let task_key = key.clone();
                    // The task removes its entry when done; it cannot do so before the insert
                    // below, since that needs the lock held here.
                    let task = tokio::spawn(async move {
                        let result = this.pull_now(&image).await.map_err(Arc::new);
                        lock(&this.inflight).remove(&task_key);
                        result
                    });
                    let shared = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::new(ImageError::Io {
                                context: "the pull task failed".into(),
                                source: std::io::Error::other(e.to_string()),
                            }))
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await
    }

    async fn pull_now(&self, image: &ImageRef) -> Result<Pulled, ImageError> {
        let translations = Translations::load_dir(&self.config.translations_dir);
        for problem in &translations.problems {
            warn!("{problem}");
        }
        let fail = |cause: PullCause| ImageError::Pull {
            image: image.name.clone(),
            cause: Box::new(cause),
            skipped_configs: translations.problems.clone(),
        };
        let endpoint = translations.translate(image.location());
        let url = location_url(&endpoint.url, &self.config.download_protocol)
            .map_err(|e| fail(e.into()))?;
        info!(image = %image.name, %url, config = ?endpoint.config, "pulling image");
        let body = fetch::open(&url, &endpoint.transport)
            .await
            .map_err(|e| fail(e.into()))?;

        let no_space = |e: &std::io::Error| {
            e.kind() == IoKind::StorageFull || e.kind() == IoKind::QuotaExceeded
        };
        let dir = self.config.image_dir.display().to_string();
        let io_fail = |context: String, source: std::io::Error| {
            if no_space(&source) {
                fail(PullCause::NoSpace { dir: dir.clone() })
            } else {
                fail(PullCause::Io { context, source })
            }
        };
        let mut temp = TempFile {
            path: self
                .tmp
                .join(format!("pull-{:016x}", rand::random::<u64>())),
            kept: false,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp.path)
            .map_err(|e| io_fail(format!("cannot create {}", temp.path.display()), e))?;
        let downloaded = download(body, file).await.map_err(|e| match e {
            DownloadError::Fetch(f) => fail(f.into()),
            DownloadError::Write(source) => {
                io_fail(format!("cannot write {}", temp.path.display()), source)
            }
        })?;
        let detected = format::detect(&downloaded.head, downloaded.size).map_err(|source| {
            fail(PullCause::Format {
                url: url.to_string(),
                source,
            })
        })?;
        if let Some(expected) = image.digest
            && expected != downloaded.digest
        {
            return Err(fail(PullCause::DigestMismatch {
                url: url.to_string(),
                expected: expected.hex(),
                actual: downloaded.digest.hex(),
            }));
        }

        let record = ImageRecord {
            name: image.name.clone(),
            digest: downloaded.digest.hex(),
            size: downloaded.size,
            format: detected.format.as_str().to_owned(),
            virtual_size: detected.virtual_size,
            source_url: url.to_string(),
            pulled_at_ns: now_ns(),
        };
        let _placing = lock(&self.placement);
        let blob = self.blob_path(&downloaded.digest);
        if !blob.exists() {
            std::fs::rename(&temp.path, &blob)
                .map_err(|e| io_fail(format!("cannot move the image to {}", blob.display()), e))?;
            temp.kept = true;
            sync_dir(&self.blobs)
                .map_err(|e| io_fail(format!("cannot sync {}", self.blobs.display()), e))?;
        }
        match self.meta.put_image(&record) {
            Ok(Some(old)) if old.digest != record.digest => {
                self.delete_blob_if_unused(&old.digest);
            }
            Ok(_) => {}
            Err(e) => {
                self.delete_blob_if_unused(&record.digest);
                return Err(fail(PullCause::Store(e)));
            }
        }
        info!(image = %image.name, digest = %downloaded.digest, size = downloaded.size,
              format = %detected.format, "image pulled");
        Ok(Pulled {
            image_ref: image.pinned(&downloaded.digest),
            digest: downloaded.digest,
        })
    }

    /// Deletes the blob of `digest_hex` unless a name or a user still refers to it. Called with
    /// the placement lock held. Failures are logged: startup GC retries them.
    fn delete_blob_if_unused(&self, digest_hex: &str) {
        match self.meta.digest_in_use(digest_hex) {
            Ok(true) => {}
            Ok(false) => {
                let path = self.blobs.join(digest_hex);
                match std::fs::remove_file(&path) {
                    Ok(()) => info!(digest = digest_hex, "image data deleted"),
                    Err(e) if e.kind() == IoKind::NotFound => {}
                    Err(e) => warn!(path = %path.display(), "cannot delete image data: {e}"),
                }
            }
            Err(e) => warn!(
                digest = digest_hex,
                "cannot tell whether image data is in use: {e}"
            ),
        }
    }

    /// Every image, one entry per content, names sorted.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageInfo>, ImageError> {
        let images = self.group(self.meta.images()?);
        match filter {
            None => Ok(images),
            Some(f) => {
                let query = ImageQuery::parse(f)?;
                Ok(images.into_iter().filter(|i| matches(&query, i)).collect())
            }
        }
    }

    /// The image `query` names, if present.
    pub fn status(&self, query: &str) -> Result<Option<ImageInfo>, ImageError> {
        let query = ImageQuery::parse(query)?;
        self.find(&query)
    }

    fn find(&self, query: &ImageQuery) -> Result<Option<ImageInfo>, ImageError> {
        let digest_hex = match query {
            ImageQuery::Id(d) => d.hex(),
            ImageQuery::Ref(r) => match self.meta.image(&r.name)? {
                Some(rec) if r.digest.is_none_or(|d| d.hex() == rec.digest) => rec.digest,
                _ => return Ok(None),
            },
        };
        let records: Vec<ImageRecord> = self
            .meta
            .images()?
            .into_iter()
            .filter(|r| r.digest == digest_hex)
            .collect();
        Ok(self.group(records).into_iter().next())
    }

    fn group(&self, records: Vec<ImageRecord>) -> Vec<ImageInfo> {
        let mut by_digest: BTreeMap<String, ImageInfo> = BTreeMap::new();
        for rec in records {
            let Ok(digest) = Digest::from_hex(&rec.digest) else {
                warn!(image = %rec.name, "skipping an image record with a bad digest");
                continue;
            };
            let entry = by_digest
                .entry(rec.digest.clone())
                .or_insert_with(|| ImageInfo {
                    digest,
                    names: Vec::new(),
                    size: rec.size,
                    format: rec.format.clone(),
                    virtual_size: rec.virtual_size,
                    source_url: rec.source_url.clone(),
                    pulled_at_ns: rec.pulled_at_ns,
                });
            if rec.pulled_at_ns > entry.pulled_at_ns {
                entry.pulled_at_ns = rec.pulled_at_ns;
                entry.source_url = rec.source_url.clone();
            }
            entry.names.push(rec.name);
        }
        let mut out: Vec<ImageInfo> = by_digest.into_values().collect();
        for i in &mut out {
            i.names.sort();
        }
        out
    }

    /// Removes what `query` names: an ID removes every name of that content. Data still used
    /// by a VM stays until released. Removing an absent image succeeds.
    pub fn remove(&self, query: &str) -> Result<(), ImageError> {
        let query = ImageQuery::parse(query)?;
        let _placing = lock(&self.placement);
        let Some(info) = self.find(&query)? else {
            return Ok(());
        };
        let names = match &query {
            ImageQuery::Id(_) => info.names.clone(),
            ImageQuery::Ref(r) => vec![r.name.clone()],
        };
        for name in &names {
            self.meta.remove_image(name)?;
            info!(image = %name, digest = %info.digest, "image removed");
        }
        self.delete_blob_if_unused(&info.digest.hex());
        Ok(())
    }

    /// Marks the image `query` names as used by `user` and returns it with its data's path.
    pub fn acquire(&self, query: &str, user: &str) -> Result<(ImageInfo, PathBuf), ImageError> {
        let parsed = ImageQuery::parse(query)?;
        let _placing = lock(&self.placement);
        let info = self.find(&parsed)?.ok_or_else(|| ImageError::NotPresent {
            image: query.to_owned(),
        })?;
        self.meta.add_image_user(&info.digest.hex(), user)?;
        let path = self.blob_path(&info.digest);
        Ok((info, path))
    }

    /// Ends `user`'s use of `digest`; deletes the data if nothing else refers to it.
    pub fn release(&self, digest: &Digest, user: &str) -> Result<(), ImageError> {
        let _placing = lock(&self.placement);
        self.meta.remove_image_user(&digest.hex(), user)?;
        self.delete_blob_if_unused(&digest.hex());
        Ok(())
    }

    /// Removes temporary downloads, blobs nothing refers to, and names whose data is gone.
    /// Run at startup, before serving.
    pub fn gc(&self) -> Result<GcReport, ImageError> {
        let _placing = lock(&self.placement);
        let mut report = GcReport::default();
        for entry in read_dir(&self.tmp)? {
            match std::fs::remove_file(&entry) {
                Ok(()) => report.temp_files += 1,
                Err(e) => warn!(path = %entry.display(), "GC cannot remove a temp file: {e}"),
            }
        }
        for rec in self.meta.images()? {
            if !self.blobs.join(&rec.digest).exists() {
                warn!(image = %rec.name, digest = %rec.digest, "image data is missing; forgetting the name");
                self.meta.remove_image(&rec.name)?;
                report.dangling_names += 1;
            }
        }
        let used = self.meta.digests_in_use()?;
        for blob in read_dir(&self.blobs)? {
            let name = blob
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !used.contains(&name) {
                match std::fs::remove_file(&blob) {
                    Ok(()) => report.blobs += 1,
                    Err(e) => warn!(path = %blob.display(), "GC cannot remove image data: {e}"),
                }
            }
        }
        if report != GcReport::default() {
            info!(?report, "image store GC done");
        }
        Ok(report)
    }

    /// The filesystem usage of the stored images.
    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        use std::os::unix::fs::MetadataExt;
        let mut used_bytes = 0u64;
        let mut inodes_used = 0u64;
        for path in read_dir(&self.blobs)?
            .into_iter()
            .chain(read_dir(&self.tmp)?)
        {
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                used_bytes += meta.blocks() * 512;
                inodes_used += 1;
            }
        }
        Ok(FsUsage {
            mountpoint: self.config.image_dir.clone(),
            used_bytes,
            inodes_used,
            timestamp_ns: now_ns(),
        })
    }
}

fn matches(query: &ImageQuery, info: &ImageInfo) -> bool {
    match query {
        ImageQuery::Id(d) => *d == info.digest,
        ImageQuery::Ref(r) => {
            info.names.contains(&r.name) && r.digest.is_none_or(|d| d == info.digest)
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let entries =
        std::fs::read_dir(dir).map_err(io_err(format!("cannot read {}", dir.display())))?;
    Ok(entries.filter_map(Result::ok).map(|e| e.path()).collect())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
