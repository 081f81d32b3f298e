//! Persistent metadata of virtlet, kept in one redb file.
//!
//! Tables:
//! - `meta`: `schema_version` (u32). A database written by a newer virtlet (a larger version) is
//!   refused, so an old binary never misreads or damages newer data.
//! - `images`: image key (`repo:tag`, or `repo@sha256:<hex>` for a pull by digest) ->
//!   [`ImageRecord`] as JSON. Schema 1 stored names with the tag stripped; opening such a file
//!   renames each to `name:latest` (schema 2).
//! - `image_users`: digest -> the IDs of whatever still uses that image's data (the VMs' root
//!   disks are overlays backed by it). Data is deleted only when no name and no user refers to it.
//!
//! - `sandboxes`, `containers`: ID -> the manager's record as JSON (`RecordTable`); the manager
//!   upgrades older record shapes when it loads them.
//!
//! The schema version is what lets later versions migrate older files.

use std::path::{Path, PathBuf};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    TableDefinition,
};
use serde::{Deserialize, Serialize};

/// The schema this build writes and understands.
pub const SCHEMA_VERSION: u32 = 2;

const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const IMAGE_USERS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("image_users");
const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// Tables of records kept as JSON by ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordTable {
    Sandboxes,
    Containers,
}

impl RecordTable {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            RecordTable::Sandboxes => SANDBOXES,
            RecordTable::Containers => CONTAINERS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RecordTable::Sandboxes => "sandboxes",
            RecordTable::Containers => "containers",
        }
    }
}

const SCHEMA_KEY: &str = "schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this virtlet understands; upgrade virtlet or move the file away"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("database {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("database operation failed")]
    Db(#[from] redb::Error),
    #[error("record for {key} in table {table} is corrupt")]
    Corrupt {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What the store knows of one pulled image name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The name as the user wrote it, tag stripped (`virtlet.cloud/cirros`).
    pub name: String,
    /// Lowercase hex sha256 of the content.
    pub digest: String,
    /// Bytes of the file.
    pub size: u64,
    /// `qcow2` or `raw`.
    pub format: String,
    /// The disk size the guest sees.
    pub virtual_size: u64,
    /// Where it was downloaded from.
    pub source_url: String,
    /// Unix time of the pull, in nanoseconds.
    pub pulled_at_ns: i64,
}

/// The metadata store. Cheap to share behind an `Arc`; every method is one transaction.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (creating when missing) the database at `path` and checks its schema version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_owned(),
            },
            source => StoreError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get(SCHEMA_KEY)?.map(|v| v.value());
            match found {
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::NewerSchema {
                        path: path.to_owned(),
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(SCHEMA_VERSION) => {}
                Some(1) => {
                    migrate_v1_image_names(&txn)?;
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                }
                Some(_) | None => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                }
            }
            txn.open_table(IMAGES)?;
            txn.open_multimap_table(IMAGE_USERS)?;
            txn.open_table(SANDBOXES)?;
            txn.open_table(CONTAINERS)?;
        }
        txn.commit()?;
        Ok(Store { db })
    }

    /// The schema version stored in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(SCHEMA_KEY)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Records `record` under its name; returns the record it replaced, if any.
    pub fn put_image(&self, record: &ImageRecord) -> Result<Option<ImageRecord>, StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
            table: "images",
            key: record.name.clone(),
            source,
        })?;
        let txn = self.db.begin_write()?;
        let old = {
            let mut images = txn.open_table(IMAGES)?;
            let old = images.insert(record.name.as_str(), bytes.as_slice())?;
            old.map(|v| decode_image(&record.name, v.value()))
                .transpose()?
        };
        txn.commit()?;
        Ok(old)
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let images = txn.open_table(IMAGES)?;
        images
            .get(name)?
            .map(|v| decode_image(name, v.value()))
            .transpose()
    }

    /// Every image record, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let images = txn.open_table(IMAGES)?;
        let mut out = Vec::new();
        for entry in images.iter()? {
            let (k, v) = entry?;
            out.push(decode_image(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Removes the name; returns what it pointed to.
    pub fn remove_image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let txn = self.db.begin_write()?;
        let old = {
            let mut images = txn.open_table(IMAGES)?;
            let old = images.remove(name)?;
            old.map(|v| decode_image(name, v.value())).transpose()?
        };
        txn.commit()?;
        Ok(old)
    }

    /// Marks `digest`'s data as used by `user` (idempotent).
    pub fn add_image_user(&self, digest: &str, user: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_multimap_table(IMAGE_USERS)?.insert(digest, user)?;
        txn.commit()?;
        Ok(())
    }

    /// Drops `user`'s use of `digest` (idempotent).
    pub fn remove_image_user(&self, digest: &str, user: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_multimap_table(IMAGE_USERS)?.remove(digest, user)?;
        txn.commit()?;
        Ok(())
    }

    /// Whether any name or any user still refers to `digest`.
    pub fn digest_in_use(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.digests_in_use()?.contains(digest))
    }

    /// Every digest a name or a user refers to.
    pub fn digests_in_use(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut used = std::collections::BTreeSet::new();
        for entry in txn.open_table(IMAGES)?.iter()? {
            let (k, v) = entry?;
            used.insert(decode_image(k.value(), v.value())?.digest);
        }
        for entry in txn.open_multimap_table(IMAGE_USERS)?.iter()? {
            let (k, users) = entry?;
            if !users.is_empty() {
                used.insert(k.value().to_owned());
            }
        }
        Ok(used)
    }

    /// Writes `record` under `id` in `table`.
    pub fn put_record<T: Serialize>(
        &self,
        table: RecordTable,
        id: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
            table: table.name(),
            key: id.to_owned(),
            source,
        })?;
        let txn = self.db.begin_write()?;
        txn.open_table(table.def())?.insert(id, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes `id` from `table` (absent is fine).
    pub fn delete_record(&self, table: RecordTable, id: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(table.def())?.remove(id)?;
        txn.commit()?;
        Ok(())
    }

    /// Every record of `table`.
    pub fn records<T: for<'de> Deserialize<'de>>(
        &self,
        table: RecordTable,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table.def())?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    table: table.name(),
                    key: k.value().to_owned(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// The users of `digest`, sorted.
    pub fn image_users(&self, digest: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_multimap_table(IMAGE_USERS)?;
        let mut out = Vec::new();
        for user in table.get(digest)? {
            out.push(user?.value().to_owned());
        }
        Ok(out)
    }
}

/// Schema 1 kept image names with the tag stripped (every name meant `:latest`); schema 2
/// keys them by `repo:tag`.
fn migrate_v1_image_names(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut images = txn.open_table(IMAGES)?;
    let mut old = Vec::new();
    for entry in images.iter()? {
        let (k, v) = entry?;
        old.push((k.value().to_owned(), decode_image(k.value(), v.value())?));
    }
    for (name, mut record) in old {
        images.remove(name.as_str())?;
        record.name = format!("{name}:latest");
        let bytes = serde_json::to_vec(&record).map_err(|source| StoreError::Corrupt {
            table: "images",
            key: record.name.clone(),
            source,
        })?;
        images.insert(record.name.as_str(), bytes.as_slice())?;
    }
    Ok(())
}

fn decode_image(key: &str, bytes: &[u8]) -> Result<ImageRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table: "images",
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(name: &str, digest: &str) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            digest: digest.into(),
            size: 10,
            format: "qcow2".into(),
            virtual_size: 100,
            source_url: format!("https://example.com/{name}"),
            pulled_at_ns: 1,
        }
    }

    #[test]
    fn images_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.put_image(&record("a", "d1")).unwrap(), None);
        let old = store.put_image(&record("a", "d2")).unwrap();
        assert_eq!(old.unwrap().digest, "d1");
        store.put_image(&record("b", "d2")).unwrap();
        let names: Vec<_> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.image("b").unwrap().unwrap().digest, "d2");
        assert_eq!(store.remove_image("a").unwrap().unwrap().name, "a");
        assert_eq!(store.remove_image("a").unwrap(), None);
        assert_eq!(store.image("a").unwrap(), None);
    }

    #[test]
    fn users_keep_digests_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.put_image(&record("a", "d1")).unwrap();
        store.add_image_user("d1", "vm1").unwrap();
        store.add_image_user("d1", "vm1").unwrap();
        store.add_image_user("d1", "vm2").unwrap();
        assert_eq!(store.image_users("d1").unwrap(), ["vm1", "vm2"]);
        store.remove_image("a").unwrap();
        assert!(store.digest_in_use("d1").unwrap());
        store.remove_image_user("d1", "vm1").unwrap();
        store.remove_image_user("d1", "vm2").unwrap();
        store.remove_image_user("d1", "vm2").unwrap();
        assert!(!store.digest_in_use("d1").unwrap());
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Store::open(&path)
            .unwrap()
            .put_image(&record("a", "d1"))
            .unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.image("a").unwrap().unwrap().digest, "d1");
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store
            .put_record(RecordTable::Sandboxes, "a", &vec![1, 2])
            .unwrap();
        store
            .put_record(RecordTable::Sandboxes, "b", &vec![3])
            .unwrap();
        store
            .put_record(RecordTable::Containers, "c", &vec![4])
            .unwrap();
        let s: Vec<Vec<i32>> = store.records(RecordTable::Sandboxes).unwrap();
        assert_eq!(s, vec![vec![1, 2], vec![3]]);
        store.delete_record(RecordTable::Sandboxes, "a").unwrap();
        store.delete_record(RecordTable::Sandboxes, "a").unwrap();
        let s: Vec<Vec<i32>> = store.records(RecordTable::Sandboxes).unwrap();
        assert_eq!(s, vec![vec![3]]);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path).err().unwrap();
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{msg}"
        );
    }

    #[test]
    fn schema_1_names_become_latest_tags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, 1).unwrap();
            {
                let mut images = txn.open_table(IMAGES).unwrap();
                for name in [
                    "virtlet.cloud/tiny",
                    "virtlet.cloud/https://example.com:8443",
                ] {
                    let bytes = serde_json::to_vec(&record(name, "d1")).unwrap();
                    images.insert(name, bytes.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let names: Vec<_> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [
                "virtlet.cloud/https://example.com:8443:latest",
                "virtlet.cloud/tiny:latest"
            ]
        );
        assert!(store.image("virtlet.cloud/tiny:latest").unwrap().is_some());
        drop(store);
        // Opening again changes nothing.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.images().unwrap().len(), 2);
    }

    #[test]
    fn second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    }
}
