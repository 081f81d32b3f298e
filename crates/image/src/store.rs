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
use crate::reference::{ImageQuery, ImageRef, VIRTLET_PREFIX, parse_key};
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
    /// The stored keys: `repo:tag` for tagged pulls, `repo@sha256:<hex>` for pulls by digest.
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

    /// `repo:tag` for every tag this content was pulled under, sorted.
    pub fn repo_tags(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| !n.contains('@'))
            .cloned()
            .collect()
    }

    /// `repo@sha256:<hex>` for every repository this content was pulled from, sorted.
    pub fn repo_digests(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .names
            .iter()
            .filter_map(|n| parse_key(n))
            .map(|r| r.pinned(&self.digest))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// What a container made from this image reports as its `imageRef`: the repo digest of
    /// the repository it was asked for by, else the first repo digest, else the ID.
    pub fn image_ref_for(&self, requested: &str) -> String {
        let digests = self.repo_digests();
        let wanted = ImageRef::parse(requested)
            .ok()
            .map(|r| r.pinned(&self.digest));
        match wanted {
            Some(w) if digests.contains(&w) => w,
            _ => digests.into_iter().next().unwrap_or_else(|| self.id()),
        }
    }
}

/// What a pull produced.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image ID, `sha256:<hex>`: the PullImage answer (CRI wants the ID `ImageStatus` shows).
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

struct Inflight {
    /// The keys (`repo:tag` / `repo@sha256:..`) of every pull waiting on this download.
    keys: Vec<String>,
    shared: SharedPull,
}

pub struct ImageStore {
    config: ImageStoreConfig,
    blobs: PathBuf,
    tmp: PathBuf,
    meta: Arc<Store>,
    /// Serializes decisions about names and blobs (place, remove, acquire, GC).
    placement: Mutex<()>,
    /// Downloads under way, by repository (and pinned digest): a second pull of the same
    /// repository joins the first, whatever its tag, and its key is recorded with the first's.
    inflight: Mutex<HashMap<String, Inflight>>,
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

    /// Pulls `reference`. Concurrent pulls of the same repository share one download (a tag
    /// never changes where an image comes from) and each gets its own name; the download goes
    /// on even if the callers give up, so the next caller finds it done.
    pub async fn pull(self: &Arc<Self>, reference: &str) -> Result<Pulled, Arc<ImageError>> {
        let image = ImageRef::parse(reference).map_err(|e| Arc::new(e.into()))?;
        let download_key = match &image.digest {
            Some(d) => image.pinned(d),
            None => image.repo.clone(),
        };
        let shared = {
            let mut inflight = lock(&self.inflight);
            match inflight.get_mut(&download_key) {
                Some(running) => {
                    info!(image = %reference, "joining a pull already under way");
                    running.keys.push(image.key());
                    running.shared.clone()
                }
                None => {
                    let this = Arc::clone(self);
                    let task_key = download_key.clone();
                    let shown = reference.to_owned();
                    // The task takes its entry out when the download is done; it cannot do so
                    // before the insert below, since that needs the lock held here.
                    let task = tokio::spawn(async move {
                        this.pull_now(&image, &shown, &task_key)
                            .await
                            .map_err(Arc::new)
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
                    inflight.insert(
                        download_key,
                        Inflight {
                            keys: Vec::new(),
                            shared: shared.clone(),
                        },
                    );
                    shared
                }
            }
        };
        shared.await
    }

    /// Downloads `image` (`shown` is the reference as given, for messages), then records its
    /// key and the keys of every pull that joined this download (`download_key`).
    async fn pull_now(
        &self,
        image: &ImageRef,
        shown: &str,
        download_key: &str,
    ) -> Result<Pulled, ImageError> {
        let result = self.download_and_place(image, shown, download_key).await;
        if result.is_err() {
            lock(&self.inflight).remove(download_key);
        }
        result
    }

    async fn download_and_place(
        &self,
        image: &ImageRef,
        shown: &str,
        download_key: &str,
    ) -> Result<Pulled, ImageError> {
        let translations = Translations::load_dir(&self.config.translations_dir);
        for problem in &translations.problems {
            warn!("{problem}");
        }
        let fail = |cause: PullCause| ImageError::Pull {
            image: shown.to_owned(),
            cause: Box::new(cause),
            skipped_configs: translations.problems.clone(),
        };
        let endpoint = translations.translate(image.location());
        let url = location_url(&endpoint.url, &self.config.download_protocol)
            .map_err(|e| fail(e.into()))?;
        info!(image = %shown, %url, config = ?endpoint.config, "pulling image");
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

        // Every pull that joined this download is recorded with it; later pulls download
        // again (the content behind a URL may change).
        let mut keys = vec![image.key()];
        if let Some(joined) = lock(&self.inflight).remove(download_key) {
            keys.extend(joined.keys);
        }
        keys.sort();
        keys.dedup();
        let pulled_at_ns = now_ns();
        let _placing = lock(&self.placement);
        let blob = self.blob_path(&downloaded.digest);
        if !blob.exists() {
            std::fs::rename(&temp.path, &blob)
                .map_err(|e| io_fail(format!("cannot move the image to {}", blob.display()), e))?;
            temp.kept = true;
            sync_dir(&self.blobs)
                .map_err(|e| io_fail(format!("cannot sync {}", self.blobs.display()), e))?;
        }
        for key in &keys {
            let record = ImageRecord {
                name: key.clone(),
                digest: downloaded.digest.hex(),
                size: downloaded.size,
                format: detected.format.as_str().to_owned(),
                virtual_size: detected.virtual_size,
                source_url: url.to_string(),
                pulled_at_ns,
            };
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
        }
        info!(image = %shown, names = ?keys, digest = %downloaded.digest, size = downloaded.size,
              format = %detected.format, "image pulled");
        Ok(Pulled {
            image_ref: downloaded.digest.id(),
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

    /// Every image, one entry per content, names sorted; with a filter, the image it names.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageInfo>, ImageError> {
        match filter {
            None => Ok(self.group(self.meta.images()?)),
            Some(f) => Ok(self.status(f)?.into_iter().collect()),
        }
    }

    /// Whether `name` is a VM image, for a node that shares the kubelet with a container
    /// runtime: a `virtlet.cloud/` name, a name a translation config matches, or an image (by
    /// name or ID) this store holds.
    pub fn serves(&self, name: &str) -> bool {
        if name.starts_with(VIRTLET_PREFIX) || matches!(self.status(name), Ok(Some(_))) {
            return true;
        }
        match ImageRef::parse(name) {
            Ok(r) => Translations::load_dir(&self.config.translations_dir).matches(r.location()),
            Err(_) => false,
        }
    }

    /// The image `query` names, if present: by ID (whole or a unique prefix of its hex), by
    /// `repo:tag` (`repo` alone is `repo:latest`), or by `repo@sha256:<hex>` (any tag in it
    /// is ignored).
    pub fn status(&self, query: &str) -> Result<Option<ImageInfo>, ImageError> {
        let query = ImageQuery::parse(query)?;
        self.find(&query)
    }

    fn find(&self, query: &ImageQuery) -> Result<Option<ImageInfo>, ImageError> {
        let records = self.meta.images()?;
        let digest_hex = match query {
            ImageQuery::Id(d) => Some(d.hex()),
            ImageQuery::Ref {
                reference,
                id_prefix,
            } => {
                let by_name = match &reference.digest {
                    Some(d) => {
                        let hex = d.hex();
                        records
                            .iter()
                            .any(|r| {
                                r.digest == hex
                                    && parse_key(&r.name).is_some_and(|k| k.repo == reference.repo)
                            })
                            .then_some(hex)
                    }
                    None => {
                        let key = reference.tagged();
                        records
                            .iter()
                            .find(|r| r.name == key)
                            .map(|r| r.digest.clone())
                    }
                };
                by_name.or_else(|| {
                    let prefix = id_prefix.as_deref()?;
                    let mut found: Vec<&str> = records
                        .iter()
                        .map(|r| r.digest.as_str())
                        .filter(|d| d.starts_with(prefix))
                        .collect();
                    found.sort_unstable();
                    found.dedup();
                    (found.len() == 1).then(|| found[0].to_owned())
                })
            }
        };
        let Some(digest_hex) = digest_hex else {
            return Ok(None);
        };
        let records: Vec<ImageRecord> = records
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

    /// Removes the image `query` names, with every name it has (as CRI's RemoveImage does,
    /// whichever of its tags or digests is given). Data still used by a VM stays until
    /// released. Removing an absent image succeeds.
    pub fn remove(&self, query: &str) -> Result<(), ImageError> {
        let query = ImageQuery::parse(query)?;
        let _placing = lock(&self.placement);
        let Some(info) = self.find(&query)? else {
            return Ok(());
        };
        for name in &info.names {
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

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let entries =
        std::fs::read_dir(dir).map_err(io_err(format!("cannot read {}", dir.display())))?;
    Ok(entries.filter_map(Result::ok).map(|e| e.path()).collect())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
