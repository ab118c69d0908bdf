//! The module registry: uploaded components, by name and version, in the
//! server's data folder.
//!
//! Layout: `modules/blobs/<sha256>.wasm` holds each distinct component once
//! (content-addressed); `modules/index.json` maps each name to its versions
//! (1, 2, ...) and their digests. Every upload of a name is a new version,
//! even with bytes seen before. A component is accepted only after it
//! compiled and matched the guest contract's world, so a job never meets a
//! bad module at start. The index is rewritten whole (temporary file, then
//! rename) after every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::graph::spec::check_name;
use crate::wasm::{ModuleError, WasmRuntime};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    BadName(String),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error("no module `{0}`")]
    NotFound(String),
    #[error("module `{name}` has no version {version}")]
    NoVersion { name: String, version: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleVersionInfo {
    pub version: u32,
    pub digest: String,
    pub size: u64,
    pub uploaded_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    modules: BTreeMap<String, Vec<ModuleVersionInfo>>,
}

pub struct ModuleRegistry {
    dir: PathBuf,
    index: Mutex<Index>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ModuleRegistry {
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        let dir = data_dir.join("modules");
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let index_path = dir.join("index.json");
        let index = match std::fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RegistryError::Io {
                path: index_path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(io(&index_path)(e)),
        };
        Ok(ModuleRegistry {
            dir,
            index: Mutex::new(index),
        })
    }

    fn save(&self, index: &Index) -> Result<(), RegistryError> {
        let path = self.dir.join("index.json");
        let tmp = self.dir.join("index.json.tmp");
        let json = serde_json::to_vec_pretty(index).expect("the index serializes");
        std::fs::write(&tmp, json).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{digest}.wasm"))
    }

    /// Validates and stores a component; returns its new version.
    pub fn upload(
        &self,
        wasm: &WasmRuntime,
        name: &str,
        bytes: &[u8],
    ) -> Result<ModuleVersionInfo, RegistryError> {
        check_name("name", name).map_err(|e| RegistryError::BadName(e.to_string()))?;
        let module = wasm.load(name, bytes)?;
        let blob = self.blob_path(&module.digest);
        if !blob.is_file() {
            let tmp = blob.with_extension("tmp");
            std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &blob).map_err(io(&blob))?;
        }
        let mut index = self.index.lock().expect("registry lock");
        let versions = index.modules.entry(name.to_owned()).or_default();
        let info = ModuleVersionInfo {
            version: versions.last().map_or(1, |v| v.version + 1),
            digest: module.digest.clone(),
            size: bytes.len() as u64,
            uploaded_ms: crate::time::now_millis(),
        };
        versions.push(info.clone());
        self.save(&index)?;
        Ok(info)
    }

    pub fn list(&self) -> BTreeMap<String, Vec<ModuleVersionInfo>> {
        self.index.lock().expect("registry lock").modules.clone()
    }

    pub fn versions(&self, name: &str) -> Result<Vec<ModuleVersionInfo>, RegistryError> {
        self.index
            .lock()
            .expect("registry lock")
            .modules
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))
    }

    /// `name` (latest version) or `name@version`: the version and its file.
    pub fn resolve(&self, reference: &str) -> Result<(ModuleVersionInfo, PathBuf), RegistryError> {
        let (name, version) = match reference.split_once('@') {
            Some((n, v)) => (
                n,
                Some(v.parse::<u32>().map_err(|_| {
                    RegistryError::BadName(format!(
                        "`{reference}`: the version after @ is not a number"
                    ))
                })?),
            ),
            None => (reference, None),
        };
        let versions = self.versions(name)?;
        let info = match version {
            None => versions.last().cloned(),
            Some(v) => versions.iter().find(|i| i.version == v).cloned(),
        }
        .ok_or(RegistryError::NoVersion {
            name: name.to_owned(),
            version: version.unwrap_or(0),
        })?;
        let path = self.blob_path(&info.digest);
        Ok((info, path))
    }

    /// Removes a module and all its versions (blobs still used by another
    /// name stay).
    pub fn delete(&self, name: &str) -> Result<(), RegistryError> {
        let mut index = self.index.lock().expect("registry lock");
        let removed = index
            .modules
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        self.save(&index)?;
        for info in removed {
            let shared = index
                .modules
                .values()
                .flatten()
                .any(|other| other.digest == info.digest);
            if !shared {
                let _ = std::fs::remove_file(self.blob_path(&info.digest));
            }
        }
        Ok(())
    }
}
