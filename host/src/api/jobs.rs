//! Jobs the server runs: submitted specs, their state, and the commands the
//! API gives them.
//!
//! A spec names modules from the registry (`module: name` for the latest
//! version, `name@3` for a given one); the versions are fixed at submission
//! and reported. Relative paths in a spec are relative to the data folder.
//! Each submission is recorded in `jobs/<name>.json` with its state, so a
//! server that restarts resubmits the jobs that were running, and they
//! resume from their latest checkpoints. One job of a name runs at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::registry::{ModuleRegistry, RegistryError};
use crate::checkpoint::CheckpointStore;
use crate::graph::JobSpec;
use crate::runtime::{JobControl, JobEnv, JobError, RestoreFrom, StartOptions, SwapOutcome};

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Spec(#[from] crate::graph::SpecError),
    #[error("operator `{operator}`: {source}")]
    Module {
        operator: String,
        source: RegistryError,
    },
    #[error(
        "operator `{0}`: a job submitted to the server names registry modules, not .wasm files"
    )]
    LocalModule(String),
    #[error("job `{0}` is already running")]
    Running(String),
    #[error("no job `{0}`")]
    NotFound(String),
    #[error("job `{0}` is not running")]
    NotRunning(String),
    #[error("job `{job}` has no operator `{operator}` with a module")]
    NoOperator { job: String, operator: String },
    #[error("job `{0}` did not stop for the upgrade in time")]
    StopTimeout(String),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("job `{job}`: {source}")]
    Swap {
        job: String,
        source: crate::runtime::SwapError,
    },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("savepoint target `{0}`: give an absolute folder or an s3://bucket/prefix URL")]
    SavepointTarget(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Running,
    Finished,
    Failed,
    Stopped,
    Cancelled,
}

/// What the API reports of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobInfo {
    pub name: String,
    pub state: JobState,
    /// Operator -> `module@version`.
    pub modules: BTreeMap<String, String>,
    pub parallelism: u32,
    pub submitted_ms: i64,
    #[serde(default)]
    pub records_in: u64,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub savepoint: Option<PathBuf>,
    #[serde(default)]
    pub restored_from: Option<PathBuf>,
    #[serde(default)]
    pub restarts: u32,
    /// Module swaps and their rollbacks, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub event: String,
}

/// What is stored per job to resubmit it after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobRecord {
    spec: String,
    parallelism: Option<u32>,
    info: JobInfo,
}

struct Entry {
    record: JobRecord,
    control: Option<JobControl>,
    checkpoints: Option<CheckpointStore>,
}

pub struct JobManager {
    data_dir: PathBuf,
    env: JobEnv,
    registry: Arc<ModuleRegistry>,
    jobs: Arc<Mutex<BTreeMap<String, Entry>>>,
}

/// Submission options.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Submit {
    /// Resume from this savepoint folder.
    pub from_savepoint: Option<PathBuf>,
    /// Override the spec's parallelism.
    pub parallelism: Option<u32>,
    /// Ignore the job's existing checkpoints.
    #[serde(default)]
    pub fresh: bool,
}

/// What an upgrade did.
#[derive(Clone, Debug, Serialize)]
pub struct UpgradeOutcome {
    pub upgraded: bool,
    /// `in-place`: swapped inside the running tasks at a checkpoint
    /// barrier; `restart`: stopped with a savepoint and resumed (jobs
    /// without periodic checkpoints).
    pub mode: &'static str,
    pub operator: String,
    /// The module version the operator runs now (`name@version`).
    pub module: String,
    /// The checkpoint or savepoint taken at the upgrade, the old version's
    /// state: what a rollback restarts from.
    pub savepoint: PathBuf,
    /// Why the new version was rolled back, when it was.
    pub rolled_back: Option<String>,
}

/// A savepoint of a job in the data folder.
#[derive(Clone, Debug, Serialize)]
pub struct SavepointInfo {
    pub path: PathBuf,
    pub id: u64,
    pub created_ms: i64,
    /// Bytes of its files.
    pub size_bytes: u64,
}

impl JobManager {
    pub fn new(data_dir: &Path, env: JobEnv, registry: Arc<ModuleRegistry>) -> Self {
        JobManager {
            data_dir: data_dir.to_owned(),
            env,
            registry,
            jobs: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn record_path(data_dir: &Path, name: &str) -> PathBuf {
        data_dir.join("jobs").join(format!("{name}.json"))
    }

    fn persist(data_dir: &Path, record: &JobRecord) {
        let path = Self::record_path(data_dir, &record.info.name);
        let _ = std::fs::create_dir_all(path.parent().expect("has a parent"));
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        if std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            tracing::warn!(job = %record.info.name, "cannot record the job's state");
        }
    }

    /// Resubmits the jobs that were running when the server stopped.
    pub fn resume_all(&self) {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("jobs")) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<JobRecord>(&bytes) else {
                tracing::warn!(file = %entry.path().display(), "unreadable job record, skipped");
                continue;
            };
            if record.info.state != JobState::Running {
                continue;
            }
            let options = Submit {
                parallelism: record.parallelism,
                ..Submit::default()
            };
            match self.submit(&record.spec, &options) {
                Ok(info) => tracing::info!(job = %info.name, "resumed after a server restart"),
                Err(e) => tracing::error!(job = %record.info.name, error = %e, "cannot resume"),
            }
        }
    }

    pub fn submit(&self, text: &str, options: &Submit) -> Result<JobInfo, JobsError> {
        let mut spec = JobSpec::parse(text)?;
        if let Some(p) = options.parallelism {
            spec.parallelism = p;
        }
        spec.resolve_paths(&self.data_dir);
        let mut modules = BTreeMap::new();
        for op in &mut spec.operators {
            let Some(reference) = op.module.clone() else {
                continue;
            };
            if reference.ends_with(".wasm") {
                return Err(JobsError::LocalModule(op.name.clone()));
            }
            let (info, path) =
                self.registry
                    .resolve(&reference)
                    .map_err(|source| JobsError::Module {
                        operator: op.name.clone(),
                        source,
                    })?;
            let name = reference.split('@').next().unwrap_or(&reference);
            modules.insert(op.name.clone(), format!("{name}@{}", info.version));
            op.module = Some(path.to_string_lossy().into_owned());
        }
        spec.validate()?;
        let mut jobs = self.jobs.lock().expect("jobs lock");
        if jobs
            .get(&spec.name)
            .is_some_and(|e| e.record.info.state == JobState::Running)
        {
            return Err(JobsError::Running(spec.name.clone()));
        }
        let restore = match (&options.from_savepoint, options.fresh) {
            (Some(p), _) => RestoreFrom::Savepoint(p.clone()),
            (None, true) => RestoreFrom::Fresh,
            (None, false) => RestoreFrom::Latest,
        };
        let handle = crate::runtime::start(&spec, &self.env, StartOptions { restore })?;
        let info = JobInfo {
            name: spec.name.clone(),
            state: JobState::Running,
            modules,
            parallelism: spec.parallelism,
            submitted_ms: crate::time::now_millis(),
            records_in: 0,
            error: None,
            savepoint: None,
            restored_from: None,
            restarts: 0,
            history: Vec::new(),
        };
        let record = JobRecord {
            spec: text.to_owned(),
            parallelism: options.parallelism,
            info: info.clone(),
        };
        Self::persist(&self.data_dir, &record);
        let checkpoints = spec
            .checkpoint
            .as_ref()
            .and_then(|c| CheckpointStore::open(&c.dir, &c.local_dir, &spec.name).ok());
        jobs.insert(
            spec.name.clone(),
            Entry {
                record,
                control: Some(handle.control()),
                checkpoints,
            },
        );
        drop(jobs);
        let table = self.jobs.clone();
        let data_dir = self.data_dir.clone();
        let name = spec.name.clone();
        std::thread::Builder::new()
            .name(format!("weir-wait-{name}"))
            .spawn(move || {
                let outcome = handle.wait();
                let mut jobs = table.lock().expect("jobs lock");
                let Some(entry) = jobs.get_mut(&name) else {
                    return;
                };
                let info = &mut entry.record.info;
                match outcome {
                    Ok(report) => {
                        info.records_in = report.records_in;
                        info.restored_from = report.restored_from;
                        info.restarts = report.restarts;
                        info.state = if report.stopped_with_savepoint.is_some() {
                            info.savepoint = report.stopped_with_savepoint;
                            JobState::Stopped
                        } else {
                            JobState::Finished
                        };
                    }
                    Err(JobError::Cancelled(_)) => info.state = JobState::Cancelled,
                    Err(e) => {
                        info.state = JobState::Failed;
                        info.error = Some(e.to_string());
                    }
                }
                entry.control = None;
                Self::persist(&data_dir, &entry.record);
            })
            .map_err(|source| JobsError::Io {
                path: PathBuf::from("<thread>"),
                source,
            })?;
        Ok(info)
    }

    pub fn list(&self) -> Vec<JobInfo> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.values().map(Self::info_of).collect()
    }

    fn info_of(entry: &Entry) -> JobInfo {
        let mut info = entry.record.info.clone();
        if let Some(control) = &entry.control {
            info.records_in = control.records_processed();
            info.restarts = control.restarts();
        }
        info
    }

    pub fn get(&self, name: &str) -> Result<JobInfo, JobsError> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.get(name)
            .map(Self::info_of)
            .ok_or_else(|| JobsError::NotFound(name.to_owned()))
    }

    /// Ids of the job's complete checkpoints.
    pub fn checkpoints(&self, name: &str) -> Result<Vec<u64>, JobsError> {
        let jobs = self.jobs.lock().expect("jobs lock");
        let entry = jobs
            .get(name)
            .ok_or_else(|| JobsError::NotFound(name.to_owned()))?;
        match &entry.checkpoints {
            Some(store) => Ok(store.complete()?),
            None => Ok(Vec::new()),
        }
    }

    fn control(&self, name: &str) -> Result<JobControl, JobsError> {
        let jobs = self.jobs.lock().expect("jobs lock");
        let entry = jobs
            .get(name)
            .ok_or_else(|| JobsError::NotFound(name.to_owned()))?;
        entry
            .control
            .clone()
            .ok_or_else(|| JobsError::NotRunning(name.to_owned()))
    }

    fn savepoint_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("savepoints").join(name)
    }

    /// The job's savepoints taken through the server, newest first; a
    /// folder without a readable manifest (one being written) is left out.
    pub fn savepoints(&self, name: &str) -> Result<Vec<SavepointInfo>, JobsError> {
        self.get(name)?;
        let dir = self.savepoint_dir(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(JobsError::Io { path: dir, source }),
        };
        let mut savepoints: Vec<SavepointInfo> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let bytes = std::fs::read(path.join(crate::checkpoint::manifest::MANIFEST)).ok()?;
                let manifest: crate::checkpoint::Manifest = serde_json::from_slice(&bytes).ok()?;
                Some(SavepointInfo {
                    id: manifest.checkpoint,
                    created_ms: manifest.created_ms,
                    size_bytes: manifest.files.iter().map(|f| f.size).sum(),
                    path,
                })
            })
            .collect();
        savepoints.sort_by_key(|s| std::cmp::Reverse((s.created_ms, s.id)));
        Ok(savepoints)
    }

    /// The job's spec as it runs (with the parallelism it was submitted
    /// with) and its operators' module versions.
    pub fn spec(&self, name: &str) -> Result<(JobSpec, BTreeMap<String, String>), JobsError> {
        let (text, parallelism, modules) = {
            let jobs = self.jobs.lock().expect("jobs lock");
            let entry = jobs
                .get(name)
                .ok_or_else(|| JobsError::NotFound(name.to_owned()))?;
            (
                entry.record.spec.clone(),
                entry.record.parallelism,
                entry.record.info.modules.clone(),
            )
        };
        let mut spec = JobSpec::parse(&text)?;
        if let Some(p) = parallelism {
            spec.parallelism = p;
        }
        Ok((spec, modules))
    }

    /// Blocks until the savepoint is complete. It goes below `target` (an
    /// absolute folder or `s3://bucket/prefix`, as Flink's
    /// `target-directory`), else below the data folder, where
    /// [`Jobs::savepoints`] lists it.
    pub fn savepoint(
        &self,
        name: &str,
        stop: bool,
        target: Option<PathBuf>,
    ) -> Result<PathBuf, JobsError> {
        if let Some(t) = &target
            && !(t.is_absolute() || crate::checkpoint::storage::is_remote(t))
        {
            return Err(JobsError::SavepointTarget(t.clone()));
        }
        let control = self.control(name)?;
        let dir = target.unwrap_or_else(|| self.savepoint_dir(name));
        Ok(if stop {
            control.stop_with_savepoint(&dir)?
        } else {
            control.savepoint(&dir)?
        })
    }

    pub fn cancel(&self, name: &str) -> Result<(), JobsError> {
        self.control(name)?.cancel();
        Ok(())
    }

    /// Starts a job that is not running again with its own spec: from
    /// `savepoint`, by default the one it stopped with, else from its
    /// latest complete checkpoint; optionally at another parallelism.
    pub fn resume(
        &self,
        name: &str,
        savepoint: Option<PathBuf>,
        parallelism: Option<u32>,
    ) -> Result<JobInfo, JobsError> {
        let (text, submitted_with, stopped_with) = {
            let jobs = self.jobs.lock().expect("jobs lock");
            let entry = jobs
                .get(name)
                .ok_or_else(|| JobsError::NotFound(name.to_owned()))?;
            if entry.record.info.state == JobState::Running {
                return Err(JobsError::Running(name.to_owned()));
            }
            (
                entry.record.spec.clone(),
                entry.record.parallelism,
                entry.record.info.savepoint.clone(),
            )
        };
        self.submit(
            &text,
            &Submit {
                from_savepoint: savepoint.or(stopped_with),
                parallelism: parallelism.or(submitted_with),
                fresh: false,
            },
        )
    }

    /// A running job's spec text, the parallelism it was submitted with and
    /// its checkpoint store.
    fn running(
        &self,
        name: &str,
    ) -> Result<(String, Option<u32>, Option<CheckpointStore>), JobsError> {
        let jobs = self.jobs.lock().expect("jobs lock");
        let entry = jobs
            .get(name)
            .ok_or_else(|| JobsError::NotFound(name.to_owned()))?;
        if entry.record.info.state != JobState::Running {
            return Err(JobsError::NotRunning(name.to_owned()));
        }
        Ok((
            entry.record.spec.clone(),
            entry.record.parallelism,
            entry.checkpoints.clone(),
        ))
    }

    /// Changes a running job's parallelism: stop with a savepoint, resume
    /// from it at `parallelism`. The job's spec is kept; only the
    /// parallelism it was submitted with changes.
    pub fn rescale(&self, name: &str, parallelism: u32) -> Result<JobInfo, JobsError> {
        let (text, _, _) = self.running(name)?;
        // A parallelism the spec cannot take is refused before anything stops.
        let mut spec = JobSpec::parse(&text)?;
        spec.parallelism = parallelism;
        spec.validate()?;
        let savepoint = self.savepoint(name, true, None)?;
        self.wait_not_running(name, std::time::Duration::from_secs(60))?;
        self.submit(
            &text,
            &Submit {
                from_savepoint: Some(savepoint),
                parallelism: Some(parallelism),
                fresh: false,
            },
        )
    }

    /// Waits until the job is no longer running.
    fn wait_not_running(&self, name: &str, limit: std::time::Duration) -> Result<(), JobsError> {
        let deadline = std::time::Instant::now() + limit;
        while self.get(name)?.state == JobState::Running {
            if std::time::Instant::now() > deadline {
                return Err(JobsError::StopTimeout(name.to_owned()));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Swaps the module of one operator of a running job, keeping its state:
    /// stop with a savepoint, resume from it with `module`, and watch the
    /// new version for `probation`. If it cannot start, fails or restarts in
    /// that time, the job goes back to the module it had, from the newest
    /// consistent state: the new version's latest complete checkpoint if it
    /// completed one (so nothing it committed is replayed), else the
    /// savepoint. Either way the job keeps running and its output stays
    /// exactly once; the state must therefore be readable by both versions.
    pub fn upgrade(
        &self,
        name: &str,
        operator: &str,
        module: &str,
        probation: std::time::Duration,
    ) -> Result<UpgradeOutcome, JobsError> {
        let (old_text, parallelism, store) = self.running(name)?;
        let no_operator = || JobsError::NoOperator {
            job: name.to_owned(),
            operator: operator.to_owned(),
        };
        let mut value: serde_yaml::Value = serde_yaml::from_str(&old_text)
            .map_err(|e| crate::graph::SpecError::Parse(e.to_string()))?;
        let slot = value
            .get_mut("operators")
            .and_then(serde_yaml::Value::as_sequence_mut)
            .and_then(|ops| {
                ops.iter_mut()
                    .find(|o| o.get("name").and_then(serde_yaml::Value::as_str) == Some(operator))
            })
            .and_then(|o| o.get_mut("module"))
            .ok_or_else(no_operator)?;
        let previous = slot.as_str().unwrap_or_default().to_owned();
        *slot = serde_yaml::Value::String(module.to_owned());
        let new_text = serde_yaml::to_string(&value).expect("YAML values serialize");
        // Refuse an unknown module before anything stops.
        let (version, path) =
            self.registry
                .resolve(module)
                .map_err(|source| JobsError::Module {
                    operator: operator.to_owned(),
                    source,
                })?;
        let reference = format!(
            "{}@{}",
            module.split('@').next().unwrap_or(module),
            version.version
        );
        let checkpointed = JobSpec::parse(&old_text).is_ok_and(|s| s.checkpoint.is_some());
        if let (true, Some(store)) = (checkpointed, &store) {
            return self.swap_in_place(name, operator, (&reference, &path), new_text, store);
        }

        let savepoint = self.savepoint(name, true, None)?;
        self.wait_not_running(name, std::time::Duration::from_secs(60))?;
        let newest = || {
            store
                .as_ref()
                .and_then(|s| s.complete().ok())
                .and_then(|ids| ids.last().copied())
        };
        let newest_before = newest();
        let from_savepoint = Submit {
            from_savepoint: Some(savepoint.clone()),
            parallelism,
            fresh: false,
        };
        let failure = match self.submit(&new_text, &from_savepoint) {
            Err(e) => Some(e.to_string()),
            Ok(_) => self.watch(name, probation),
        };
        let Some(reason) = failure else {
            crate::metrics::metrics()
                .hot_swaps
                .with_label_values(&[name, operator])
                .inc();
            tracing::info!(job = %name, %operator, from = %previous, to = %module, "operator upgraded");
            return self.outcome(name, operator, savepoint, None);
        };
        tracing::warn!(job = %name, %operator, to = %module, %reason, "upgrade failed; rolling back");
        if let Ok(control) = self.control(name) {
            control.cancel();
        }
        self.wait_not_running(name, std::time::Duration::from_secs(60))?;
        let newest_after = newest();
        let back = if newest_after > newest_before {
            Submit {
                from_savepoint: None,
                parallelism,
                fresh: false,
            }
        } else {
            from_savepoint
        };
        self.submit(&old_text, &back)?;
        self.outcome(name, operator, savepoint, Some(reason))
    }

    /// The in-place upgrade: the new version takes over inside the running
    /// tasks at a checkpoint barrier and is confirmed by the next complete
    /// checkpoint, or rolled back to the one taken at the swap.
    fn swap_in_place(
        &self,
        name: &str,
        operator: &str,
        (reference, path): (&str, &Path),
        new_text: String,
        store: &CheckpointStore,
    ) -> Result<UpgradeOutcome, JobsError> {
        let loaded =
            self.env
                .wasm
                .load_file(reference, path)
                .map_err(|source| JobError::Module {
                    operator: operator.to_owned(),
                    source,
                })?;
        let outcome = self
            .control(name)?
            .swap_operator(operator, loaded, None)
            .map_err(|source| JobsError::Swap {
                job: name.to_owned(),
                source,
            })?;
        let mut jobs = self.jobs.lock().expect("jobs lock");
        let entry = jobs
            .get_mut(name)
            .ok_or_else(|| JobsError::NotFound(name.to_owned()))?;
        let info = &mut entry.record.info;
        let previous = info.modules.get(operator).cloned().unwrap_or_default();
        let (savepoint, rolled_back, event) = match outcome {
            SwapOutcome::Committed {
                swapped_at,
                confirmed_by,
            } => {
                info.modules
                    .insert(operator.to_owned(), reference.to_owned());
                entry.record.spec = new_text;
                (
                    store.checkpoint_dir(swapped_at),
                    None,
                    format!(
                        "operator `{operator}` swapped from {previous} to {reference} at \
                         checkpoint {swapped_at}, confirmed by checkpoint {confirmed_by}"
                    ),
                )
            }
            SwapOutcome::RolledBack { reason } => (
                store
                    .complete()
                    .ok()
                    .and_then(|ids| ids.last().map(|&id| store.checkpoint_dir(id)))
                    .unwrap_or_default(),
                Some(reason.clone()),
                format!(
                    "operator `{operator}`: {reference} failed and was rolled back to \
                     {previous}: {reason}"
                ),
            ),
        };
        tracing::info!(job = %name, %event, "upgrade");
        entry.record.info.history.push(HistoryEntry {
            at_ms: crate::time::now_millis(),
            event,
        });
        Self::persist(&self.data_dir, &entry.record);
        let module = entry.record.info.modules.get(operator).cloned();
        Ok(UpgradeOutcome {
            mode: "in-place",
            upgraded: rolled_back.is_none(),
            operator: operator.to_owned(),
            module: module.unwrap_or_default(),
            savepoint,
            rolled_back,
        })
    }

    fn outcome(
        &self,
        name: &str,
        operator: &str,
        savepoint: PathBuf,
        rolled_back: Option<String>,
    ) -> Result<UpgradeOutcome, JobsError> {
        let module = self.get(name)?.modules.get(operator).cloned();
        Ok(UpgradeOutcome {
            mode: "restart",
            upgraded: rolled_back.is_none(),
            operator: operator.to_owned(),
            module: module.unwrap_or_default(),
            savepoint,
            rolled_back,
        })
    }

    /// Watches a job for `probation`: the reason it failed or restarted, if it did.
    fn watch(&self, name: &str, probation: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + probation;
        loop {
            let info = self.get(name).ok()?;
            if info.state != JobState::Running {
                return Some(
                    info.error
                        .unwrap_or_else(|| format!("the job ended ({:?})", info.state)),
                );
            }
            if let Ok(control) = self.control(name)
                && control.restarts() > 0
            {
                return Some("the new version failed and the job restarted".into());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// True when a running job uses a version of module `name`.
    pub fn uses_module(&self, name: &str) -> Option<String> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.values()
            .filter(|e| e.record.info.state == JobState::Running)
            .find(|e| {
                e.record
                    .info
                    .modules
                    .values()
                    .any(|m| m.split('@').next() == Some(name))
            })
            .map(|e| e.record.info.name.clone())
    }
}
