//! Checkpoints in S3-compatible object storage (`checkpoint.dir:
//! s3://bucket/prefix`), through the `object_store` crate.
//!
//! Checkpoints are always written to a local folder first (the staging
//! copy) and then uploaded, each file as it is written and the manifest
//! last, so an object-store checkpoint is complete exactly when its
//! `manifest.json` object exists. Restoring prefers the local copy when it
//! is there and verifies (local recovery) and downloads otherwise; either
//! way the files are checked against the manifest's checksums.
//!
//! Credentials and region come from the usual `AWS_*` environment
//! variables; `AWS_ENDPOINT_URL` points at an S3-compatible server (plain
//! `http://` endpoints are allowed, with path-style requests).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;

use super::CheckpointError;

/// One job's folder in a bucket.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    /// `prefix/job`, without slashes at either end.
    root: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

fn remote_error(url: &str, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Remote {
        url: url.to_owned(),
        message: e.to_string(),
    }
}

impl Remote {
    /// A job's checkpoints: `url` is `s3://bucket[/prefix]`, the job's
    /// folder is `prefix/job`.
    pub fn new(url: &str, job: &str) -> Result<Self, CheckpointError> {
        Self::open(url, Some(job))
    }

    /// The folder `url` itself (`s3://bucket/prefix`), e.g. a savepoint's.
    pub fn folder(url: &str) -> Result<Self, CheckpointError> {
        Self::open(url, None)
    }

    fn open(url: &str, job: Option<&str>) -> Result<Self, CheckpointError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| remote_error(url, "only s3:// URLs are supported"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(remote_error(url, "the URL names no bucket"));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .ok();
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(&endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| remote_error(url, e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| remote_error(url, e))?;
        let prefix = prefix.trim_matches('/');
        let root = match job {
            Some(job) if prefix.is_empty() => job.to_owned(),
            Some(job) => format!("{prefix}/{job}"),
            None if prefix.is_empty() => {
                return Err(remote_error(url, "the URL names no folder in the bucket"));
            }
            None => prefix.to_owned(),
        };
        Ok(Remote {
            url: format!("s3://{bucket}/{root}"),
            store: Arc::new(store),
            root,
            runtime,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, relative: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{relative}", self.root))
    }

    pub fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), CheckpointError> {
        let path = self.path(relative);
        self.runtime
            .block_on(self.store.put(&path, bytes.into()))
            .map(|_| ())
            .map_err(|e| remote_error(&format!("{}/{relative}", self.url), e))
    }

    /// `None` when the object does not exist.
    pub fn get(&self, relative: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        let path = self.path(relative);
        let url = format!("{}/{relative}", self.url);
        self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(|e| remote_error(&url, e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(remote_error(&url, e)),
            }
        })
    }

    /// Uploads the files of local folder `dir` (not recursively) below
    /// `relative`, `last` after all the others.
    pub fn upload_folder(
        &self,
        dir: &std::path::Path,
        relative: &str,
        last: &str,
    ) -> Result<(), CheckpointError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(super::io_error(dir))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort_by_key(|n| (n == last, n.clone()));
        for name in names {
            let path = dir.join(&name);
            let bytes = std::fs::read(&path).map_err(super::io_error(&path))?;
            let key = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            self.put(&key, bytes)?;
        }
        Ok(())
    }

    /// Names of the "folders" directly below the job's root.
    pub fn folders(&self) -> Result<Vec<String>, CheckpointError> {
        let root = ObjectPath::from(self.root.as_str());
        let listing = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&root)))
            .map_err(|e| remote_error(&self.url, e))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    pub fn exists(&self, relative: &str) -> Result<bool, CheckpointError> {
        let path = self.path(relative);
        match self.runtime.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(remote_error(&format!("{}/{relative}", self.url), e)),
        }
    }

    /// Names of the objects directly in a folder below the root.
    pub fn files(&self, relative: &str) -> Result<Vec<String>, CheckpointError> {
        let folder = self.path(relative);
        let listing = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&folder)))
            .map_err(|e| remote_error(&self.url, e))?;
        Ok(listing
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_owned))
            .collect())
    }

    pub fn delete(&self, relative: &str) -> Result<(), CheckpointError> {
        let path = self.path(relative);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_error(&format!("{}/{relative}", self.url), e)),
        }
    }

    /// Deletes every object of a folder below the root.
    pub fn delete_folder(&self, relative: &str) -> Result<(), CheckpointError> {
        for name in self.files(relative)? {
            self.delete(&format!("{relative}/{name}"))?;
        }
        Ok(())
    }
}
