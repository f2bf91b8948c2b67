//! Where checkpoints are kept (`--store`): an S3-compatible bucket, GCS, Azure, a local
//! directory, or, by default, the data directory itself, all through the `object_store` crate.
//!
//! The trainer always writes a checkpoint into its run's directory under the data dir (its
//! scratch). With the default store that directory *is* the stored copy: it is recorded where it
//! lies (an absolute path), and nothing is copied. With any other store the sink uploads its
//! files under `runs/<id>/attempt-<n>/checkpoint-<step>/` and records that key only once every
//! file is in (a failed upload records nothing and removes what it sent); a worker that claims
//! the run later downloads the recorded checkpoints it lacks before training resumes.
//!
//! What the `checkpoints.path` column holds is therefore one of two things, told apart by
//! [`Location::of`]: a directory on the machine that wrote it (the default store, and every
//! checkpoint recorded before stores existed; relative to the server's working directory when
//! its `--data-dir` was), or a key relative to the store's URL, always of the form
//! `runs/<id>/attempt-<n>/checkpoint-<step>` (see [`checkpoint_key`]). The
//! attempt in the key keeps a worker that lost its claim from overwriting, with a late upload,
//! the checkpoint its run's new holder recorded at the same step.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use futures_util::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::io::AsyncWriteExt;

use crate::db::checkpoints::CheckpointFile;

/// The checkpoint store a server (or worker) was started with; cheap to clone.
#[derive(Clone)]
pub struct CheckpointStore {
    /// The configured store, rooted at its URL's prefix (the data dir for the default; none
    /// for [`CheckpointStore::directories`]).
    store: Option<Arc<dyn ObjectStore>>,
    /// The filesystem from `/`, for checkpoints recorded by absolute path.
    files: Arc<LocalFileSystem>,
    /// The store is the data dir: checkpoints are recorded where the trainer wrote them.
    in_place: bool,
    /// `--store` as given (no credentials: those come from the environment), or the data dir.
    description: String,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("store", &self.description)
            .field("in_place", &self.in_place)
            .finish_non_exhaustive()
    }
}

/// Where a recorded checkpoint's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on the machine that wrote it (the default store, and older records).
    Dir(PathBuf),
    /// A key prefix in the configured store.
    Key(String),
}

impl Location {
    /// Reads a `checkpoints.path` value.
    pub fn of(recorded: &str) -> Self {
        let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let parts: Vec<&str> = recorded.split('/').collect();
        let is_key = matches!(parts.as_slice(), ["runs", id, attempt, step]
            if number(id)
                && attempt.strip_prefix("attempt-").is_some_and(number)
                && step.strip_prefix("checkpoint-").is_some_and(number));
        if is_key {
            Self::Key(recorded.to_string())
        } else {
            Self::Dir(PathBuf::from(recorded))
        }
    }
}

/// A store error in words for logs and run errors.
pub type StoreResult<T> = Result<T, String>;

/// The key prefix of a checkpoint uploaded by one claim (`attempt`) of a run.
pub fn checkpoint_key(run_id: i64, attempt: i64, step: i64) -> String {
    format!("runs/{run_id}/attempt-{attempt}/checkpoint-{step}")
}

/// Opens `--store URL`, or with none the data dir. Credentials, endpoint and region come from
/// the environment as each cloud's SDK reads them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`; `GOOGLE_SERVICE_ACCOUNT`, …;
/// `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, …). Nothing is contacted yet.
pub fn open(url: Option<&str>, data_dir: &Path) -> anyhow::Result<CheckpointStore> {
    let Some(raw) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        return CheckpointStore::data_dir(data_dir);
    };
    let parsed = url::Url::parse(raw).map_err(|e| {
        anyhow::anyhow!("--store {raw:?} is not a URL ({e}): use s3://BUCKET/PREFIX, gs://…, az://… or file:///DIR")
    })?;
    let bad = |what: &str| anyhow::anyhow!("--store {raw:?}: {what}");
    let prefix = Key::parse(parsed.path().trim_matches('/')).map_err(|e| bad(&format!("bad prefix: {e}")))?;
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" | "s3a" => {
            if parsed.host_str().unwrap_or("").is_empty() {
                return Err(bad("names no bucket (s3://BUCKET/PREFIX)"));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_url(raw)
                .build()
                .map_err(|e| bad(&e.to_string()))?;
            Arc::new(PrefixStore::new(s3, prefix))
        }
        "gs" => {
            let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(raw)
                .build()
                .map_err(|e| bad(&e.to_string()))?;
            Arc::new(PrefixStore::new(gcs, prefix))
        }
        "az" | "azure" | "abfs" | "abfss" | "adl" => {
            let azure = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(raw)
                .build()
                .map_err(|e| bad(&e.to_string()))?;
            Arc::new(PrefixStore::new(azure, prefix))
        }
        "file" => {
            let dir = parsed.to_file_path().map_err(|()| bad("a file:// URL must name an absolute directory"))?;
            let (same, _) = same_dir(&dir, data_dir)?;
            if same {
                return CheckpointStore::data_dir(data_dir);
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("--store {raw:?}: creating {}", dir.display()))?;
            Arc::new(
                LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(&e.to_string()))?.with_automatic_cleanup(true),
            )
        }
        other => bail!("--store {raw:?}: unknown scheme {other}:// (use s3://, gs://, az:// or file://)"),
    };
    Ok(CheckpointStore::new(store, raw.to_string()))
}

/// Whether two directories are the same one (the second made if missing); answers the first
/// made absolute.
fn same_dir(a: &Path, data_dir: &Path) -> anyhow::Result<(bool, PathBuf)> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data = data_dir.canonicalize().with_context(|| format!("resolving {}", data_dir.display()))?;
    Ok((a.canonicalize().is_ok_and(|a| a == data), data))
}

impl CheckpointStore {
    /// The default: checkpoints stay where the trainer writes them, under `data_dir`.
    pub fn data_dir(data_dir: &Path) -> anyhow::Result<Self> {
        let (_, dir) = same_dir(data_dir, data_dir)?;
        let store = LocalFileSystem::new_with_prefix(&dir).with_context(|| format!("opening {}", dir.display()))?;
        Ok(Self {
            store: Some(Arc::new(store)),
            files: Arc::new(LocalFileSystem::new()),
            in_place: true,
            description: format!("the data dir {}", dir.display()),
        })
    }

    /// Checkpoints recorded by directory only (state built without a configured store).
    pub fn directories() -> Self {
        Self {
            store: None,
            files: Arc::new(LocalFileSystem::new()),
            in_place: true,
            description: "no store".to_string(),
        }
    }

    /// A store that checkpoints are uploaded to (tests wrap a real one to inject faults).
    pub fn new(store: Arc<dyn ObjectStore>, description: String) -> Self {
        Self { store: Some(store), files: Arc::new(LocalFileSystem::new()), in_place: false, description }
    }

    /// The configured object store (none for [`CheckpointStore::directories`]).
    pub fn object_store(&self) -> Option<&Arc<dyn ObjectStore>> {
        self.store.as_ref()
    }

    fn store(&self) -> StoreResult<&Arc<dyn ObjectStore>> {
        self.store.as_ref().ok_or_else(|| {
            "the checkpoint is in an object store, and this server was started without --store".to_string()
        })
    }

    /// Whether checkpoints are kept where the trainer writes them (the default store).
    pub fn in_place(&self) -> bool {
        self.in_place
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The store and key of one file of a recorded checkpoint.
    fn locate(&self, location: &Location, name: &str) -> StoreResult<(&dyn ObjectStore, Key)> {
        match location {
            Location::Dir(dir) => {
                let path = std::path::absolute(dir.join(name)).map_err(|e| format!("{}: {e}", dir.display()))?;
                let key = Key::from_absolute_path(path).map_err(|e| format!("{}: {e}", dir.display()))?;
                Ok((self.files.as_ref(), key))
            }
            Location::Key(prefix) => {
                let key = Key::parse(format!("{prefix}/{name}")).map_err(|e| format!("{prefix}/{name}: {e}"))?;
                Ok((self.store()?.as_ref(), key))
            }
        }
    }

    /// Makes the checkpoint the trainer wrote in `dir` durable, then answers what to record as
    /// its `path`: `dir` itself for the default store, else `key` once every file is uploaded.
    /// On failure what was uploaded is removed (best effort) and nothing may be recorded.
    pub async fn upload(&self, dir: &Path, key: &str, files: &[CheckpointFile]) -> StoreResult<String> {
        if self.in_place {
            return Ok(dir.to_string_lossy().into_owned());
        }
        let location = Location::Key(key.to_string());
        for f in files {
            if let Err(e) = self.upload_file(&dir.join(&f.name), &location, &f.name).await {
                if let Err(cleanup) = self.remove(&location).await {
                    tracing::warn!(key, error = %cleanup, "removing a partly uploaded checkpoint failed");
                }
                return Err(format!("uploading {} to {}: {e}", f.name, self.description));
            }
        }
        Ok(key.to_string())
    }

    async fn upload_file(&self, from: &Path, location: &Location, name: &str) -> StoreResult<()> {
        let (_, key) = self.locate(location, name)?;
        let mut file = tokio::fs::File::open(from).await.map_err(|e| format!("{}: {e}", from.display()))?;
        // Small files go up in one PUT, large ones as a multipart upload of 10 MiB parts.
        let mut writer = object_store::buffered::BufWriter::new(self.store()?.clone(), key);
        if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
            // Drops the parts of a multipart upload sent so far.
            let _ = writer.abort().await;
            return Err(e.to_string());
        }
        writer.shutdown().await.map_err(|e| e.to_string())
    }

    /// Deletes a recorded checkpoint's objects (a key's; a directory is the trainer's to remove).
    pub async fn remove(&self, location: &Location) -> StoreResult<()> {
        let Location::Key(prefix) = location else { return Ok(()) };
        let prefix = Key::parse(prefix).map_err(|e| e.to_string())?;
        let store = self.store()?;
        let listed = store.list(Some(&prefix)).map_ok(|meta| meta.location).boxed();
        let mut deleted = store.delete_stream(listed);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Copies a recorded checkpoint's `files` into `to` (created; replaced if it exists), through
    /// a temporary sibling so a half-copied directory is never taken for a checkpoint.
    pub async fn download(&self, location: &Location, files: &[CheckpointFile], to: &Path) -> StoreResult<()> {
        let parent = to.parent().ok_or_else(|| format!("{} has no parent", to.display()))?;
        let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = parent.join(format!(".{name}.download-{}", std::process::id()));
        let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        if tmp.exists() {
            tokio::fs::remove_dir_all(&tmp).await.map_err(|e| io(&tmp, e))?;
        }
        tokio::fs::create_dir_all(&tmp).await.map_err(|e| io(&tmp, e))?;
        for f in files {
            let (store, key) = self.locate(location, &f.name)?;
            let mut stream = store.get(&key).await.map_err(|e| format!("{key}: {e}"))?.into_stream();
            let path = tmp.join(&f.name);
            let mut out = tokio::fs::File::create(&path).await.map_err(|e| io(&path, e))?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("{key}: {e}"))?;
                out.write_all(&chunk).await.map_err(|e| io(&path, e))?;
            }
            out.sync_all().await.map_err(|e| io(&path, e))?;
        }
        if to.exists() {
            tokio::fs::remove_dir_all(to).await.map_err(|e| io(to, e))?;
        }
        tokio::fs::rename(&tmp, to).await.map_err(|e| io(to, e))
    }

    /// The size of one file of a recorded checkpoint.
    pub async fn size(&self, location: &Location, name: &str) -> StoreResult<u64> {
        let (store, key) = self.locate(location, name)?;
        Ok(store.head(&key).await.map_err(|e| format!("{key}: {e}"))?.size)
    }

    /// The bytes `range` (inclusive bounds; `None`: all) of one file, as a stream.
    pub async fn read(
        &self,
        location: &Location,
        name: &str,
        range: Option<(u64, u64)>,
    ) -> StoreResult<futures_util::stream::BoxStream<'static, std::io::Result<axum::body::Bytes>>> {
        let (store, key) = self.locate(location, name)?;
        let options = GetOptions { range: range.map(|(a, b)| GetRange::Bounded(a..b + 1)), ..GetOptions::default() };
        let got = store.get_opts(&key, options).await.map_err(|e| format!("{key}: {e}"))?;
        Ok(got.into_stream().map_err(std::io::Error::other).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_paths_are_directories_when_absolute_and_store_keys_otherwise() {
        assert_eq!(Location::of("/data/runs/1/checkpoint-5"), Location::Dir("/data/runs/1/checkpoint-5".into()));
        assert_eq!(
            Location::of("runs/1/attempt-2/checkpoint-5"),
            Location::Key("runs/1/attempt-2/checkpoint-5".into())
        );
        // A data dir given as a relative path recorded relative paths.
        for dir in ["goodhart-data/runs/1/checkpoint-5", "runs/1/checkpoint-5", "./runs/1/attempt-2/checkpoint-5"] {
            assert_eq!(Location::of(dir), Location::Dir(dir.into()));
        }
        assert_eq!(checkpoint_key(1, 2, 5), "runs/1/attempt-2/checkpoint-5");
    }

    #[test]
    fn a_bad_store_url_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        for (url, says) in [
            ("not a url", "is not a URL"),
            ("ftp://host/x", "unknown scheme ftp://"),
            ("s3:///prefix", "names no bucket"),
        ] {
            let e = open(Some(url), dir.path()).unwrap_err().to_string();
            assert!(e.starts_with("--store ") && e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn no_store_or_the_data_dir_as_a_file_url_keeps_checkpoints_in_place() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open(None, dir.path()).unwrap().in_place());
        let url = url::Url::from_directory_path(dir.path().canonicalize().unwrap()).unwrap();
        assert!(open(Some(url.as_str()), dir.path()).unwrap().in_place());
        let other = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(other.path()).unwrap();
        assert!(!open(Some(url.as_str()), dir.path()).unwrap().in_place());
    }

    #[tokio::test]
    async fn a_checkpoint_uploaded_to_a_directory_store_reads_back_whole_and_in_ranges_and_is_removed() {
        let (data, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let url = url::Url::from_directory_path(other.path()).unwrap();
        let store = open(Some(url.as_str()), data.path()).unwrap();
        let dir = data.path().join("checkpoint-3");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.bin"), b"0123456789").unwrap();
        let (_, files) = crate::jobs::sink::hash_dir(&dir).unwrap();
        let key = store.upload(&dir, "runs/1/attempt-1/checkpoint-3", &files).await.unwrap();
        let location = Location::of(&key);
        assert_eq!(store.size(&location, "a.bin").await.unwrap(), 10);
        let part: Vec<axum::body::Bytes> =
            store.read(&location, "a.bin", Some((2, 4))).await.unwrap().try_collect().await.unwrap();
        assert_eq!(part.concat(), b"234");
        let copy = data.path().join("copy");
        store.download(&location, &files, &copy).await.unwrap();
        assert_eq!(std::fs::read(copy.join("a.bin")).unwrap(), b"0123456789");
        store.remove(&location).await.unwrap();
        assert!(store.size(&location, "a.bin").await.is_err());
    }
}
