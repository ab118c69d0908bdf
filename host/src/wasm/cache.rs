//! Compiled modules, cached by content.
//!
//! A module's identity is the SHA-256 of its bytes. Compiled code is kept in
//! memory for the life of the process and on disk as
//! `<dir>/<sha256>-<engine hash>.cwasm`, so a restart or a second job using
//! the same module deserializes in well under a millisecond instead of
//! compiling for tens of milliseconds. The engine hash in the file name keeps
//! artifacts of a different wasmtime version or configuration from ever being
//! loaded.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The content hash that names a module.
pub fn module_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub struct ModuleCache {
    dir: Option<PathBuf>,
    engine_tag: String,
    loaded: Mutex<HashMap<String, Component>>,
}

/// How a module was obtained, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Memory,
    Disk,
    Compiled,
}

impl ModuleCache {
    /// `dir: None` keeps compiled modules in memory only.
    pub fn new(engine: &Engine, dir: Option<&Path>) -> std::io::Result<Self> {
        if let Some(d) = dir {
            std::fs::create_dir_all(d)?;
        }
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(ModuleCache {
            dir: dir.map(Path::to_owned),
            engine_tag: format!("{:016x}", h.finish()),
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The compiled form of `bytes`, compiling at most once per content.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let digest = module_digest(bytes);
        if let Some(c) = self.loaded.lock().expect("cache lock").get(&digest) {
            return Ok((c.clone(), CacheOutcome::Memory));
        }
        let path = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{}.cwasm", self.engine_tag)));
        let mut outcome = CacheOutcome::Compiled;
        let mut component = None;
        if let Some(p) = path.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (it is in the name),
            // into Weir's own data folder; deserializing runs no code, and a
            // truncated or foreign file is rejected by wasmtime's header and
            // version checks, in which case we recompile below.
            match unsafe { Component::deserialize_file(engine, p) } {
                Ok(c) => {
                    outcome = CacheOutcome::Disk;
                    component = Some(c);
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "ignoring unreadable compiled module")
                }
            }
        }
        let component = match component {
            Some(c) => c,
            None => {
                let started = Instant::now();
                let c = Component::new(engine, bytes)?;
                tracing::debug!(%digest, ms = started.elapsed().as_millis() as u64, "compiled module");
                if let Some(p) = &path {
                    let tmp = p.with_extension("tmp");
                    let written = c
                        .serialize()
                        .map_err(std::io::Error::other)
                        .and_then(|b| std::fs::write(&tmp, b))
                        .and_then(|()| std::fs::rename(&tmp, p));
                    if let Err(e) = written {
                        tracing::warn!(path = %p.display(), error = %e, "could not cache compiled module");
                    }
                }
                c
            }
        };
        self.loaded
            .lock()
            .expect("cache lock")
            .insert(digest, component.clone());
        Ok((component, outcome))
    }
}
