//! The `weir` command line: `run` a job spec in this process, `validate` a
//! spec, `bench` a workload, `serve` the REST API, and `module` / `job` to
//! talk to a server. Exit codes: 0 success, 1 the job, bench or request
//! failed, 2 bad usage or a bad spec, 3 the server could not be reached.

mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::bench::{BenchOptions, Workload};
use crate::graph::JobSpec;
use crate::runtime::{JobEnv, JobError, JobHandle, RestoreFrom, StartOptions};
use crate::wasm::{SandboxPolicy, WasmRuntime};

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Stateful stream processing with WebAssembly operators"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ModuleArgs {
    /// Folder to look up module names in (repeatable; also $WEIR_MODULE_DIR).
    #[arg(long = "module-dir")]
    pub module_dirs: Vec<PathBuf>,
    /// Folder for compiled modules (default: $WEIR_CACHE_DIR or none).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the REST API (modules, jobs, savepoints).
    Serve {
        #[arg(long, default_value_t = crate::api::default_listen())]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "weir-data")]
        data_dir: PathBuf,
        /// Bearer token for changes (default: `<data-dir>/token`, made at
        /// first start and printed once).
        #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        modules: ModuleArgs,
    },
    /// Modules on a server.
    Module {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(subcommand)]
        command: client::ModuleCommand,
    },
    /// Jobs on a server.
    Job {
        #[command(flatten)]
        server: client::ServerArgs,
        #[command(subcommand)]
        command: client::JobCommand,
    },
    /// Run a job spec in this process until its sources are exhausted.
    /// A job with checkpoints resumes from its latest complete one.
    Run {
        spec: PathBuf,
        #[command(flatten)]
        modules: ModuleArgs,
        /// Start from the beginning, ignoring the job's checkpoints.
        #[arg(long, conflicts_with = "from_savepoint")]
        fresh: bool,
        /// Resume from this savepoint (or checkpoint) folder.
        #[arg(long)]
        from_savepoint: Option<PathBuf>,
        /// Override the job's parallelism (e.g. to resume a savepoint at
        /// another parallelism).
        #[arg(long)]
        parallelism: Option<u32>,
        /// On SIGINT or SIGTERM, stop with a savepoint below this folder
        /// instead of dying.
        #[arg(long)]
        savepoint_on_signal: Option<PathBuf>,
    },
    /// Check a job spec and print what is wrong with it.
    Validate { spec: PathBuf },
    /// Run a benchmark workload and print its figures as JSON (last line).
    Bench {
        #[arg(value_enum)]
        workload: Workload,
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        #[arg(long, default_value_t = 1)]
        parallelism: u32,
        /// `memory` or `rocksdb` (which also runs memory as the baseline).
        #[arg(long, default_value = "memory")]
        state: String,
        /// Distinct keys of the keyed workloads.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        #[arg(long, default_value_t = 0)]
        checkpoint_interval: u64,
        /// With `--state rocksdb`: checkpoints copy all state instead of
        /// sharing unchanged files with the checkpoint before.
        #[arg(long)]
        full_checkpoints: bool,
        /// Measured runs per variant; figures are medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Records per batch; default: a job's default.
        #[arg(long, default_value_t = crate::graph::spec::BatchSpec::default().size)]
        batch_size: usize,
        #[command(flatten)]
        modules: ModuleArgs,
    },
}

/// Logs to stderr as `WEIR_LOG` says; a server also keeps each job's recent
/// guest lines and errors for its API ([`crate::api::logs`]), filtered on
/// their own so that `WEIR_LOG` does not decide what a job's page shows.
fn init_logging(format: LogFormat, keep_job_logs: bool) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let output = match format {
        LogFormat::Text => output.with_filter(filter).boxed(),
        LogFormat::Json => output.json().with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(output)
        .with(keep_job_logs.then(crate::api::logs::layer))
        .try_init();
}

fn job_env(modules: &ModuleArgs) -> anyhow::Result<JobEnv> {
    let cache_dir = modules
        .cache_dir
        .clone()
        .or_else(|| std::env::var_os("WEIR_CACHE_DIR").map(PathBuf::from));
    let wasm = WasmRuntime::new(SandboxPolicy::default(), cache_dir.as_deref())?;
    let mut module_dirs = modules.module_dirs.clone();
    module_dirs.extend(crate::bench::default_module_dirs());
    Ok(JobEnv::new(wasm, module_dirs))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Serve { .. }));
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            token,
            modules,
        } => serve(listen, &data_dir, token, &modules),
        Command::Module { server, command } => client::module(server, command),
        Command::Job { server, command } => client::job(server, command),
        Command::Validate { spec } => match JobSpec::load(&spec) {
            Ok(s) => {
                println!("{}: valid job `{}`", spec.display(), s.name);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            spec,
            modules,
            fresh,
            from_savepoint,
            parallelism,
            savepoint_on_signal,
        } => {
            let env = match job_env(&modules) {
                Ok(env) => env,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(1);
                }
            };
            let mut spec = match JobSpec::load(&spec) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(p) = parallelism {
                spec.parallelism = p;
            }
            let restore = match (fresh, from_savepoint) {
                (true, _) => RestoreFrom::Fresh,
                (false, Some(p)) => RestoreFrom::Savepoint(p),
                (false, None) => RestoreFrom::Latest,
            };
            let outcome =
                crate::runtime::start(&spec, &env, StartOptions { restore }).and_then(|handle| {
                    if let Some(dir) = savepoint_on_signal {
                        stop_on_signal(&handle, dir);
                    }
                    handle.wait()
                });
            match outcome {
                Ok(report) => {
                    if let Some(from) = &report.restored_from {
                        eprintln!("resumed from {}", from.display());
                    }
                    if report.restarts > 0 {
                        eprintln!("restarted {} time(s) after failures", report.restarts);
                    }
                    if report.checkpoints.completed > 0 {
                        eprintln!(
                            "checkpoints: {} complete, {} aborted",
                            report.checkpoints.completed, report.checkpoints.aborted
                        );
                    }
                    if let Some(savepoint) = &report.stopped_with_savepoint {
                        eprintln!("stopped with savepoint {}", savepoint.display());
                    }
                    eprintln!(
                        "job finished: {} records in, {} out, {:.3}s, p99 latency {:.2} ms{}",
                        report.records_in,
                        report.sink_records,
                        report.elapsed.as_secs_f64(),
                        report
                            .latency
                            .quantile(0.99)
                            .map_or(0.0, |d| d.as_secs_f64() * 1e3),
                        side_summary(&report)
                    );
                    ExitCode::SUCCESS
                }
                Err(e @ JobError::Spec(_)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Bench {
            workload,
            events,
            parallelism,
            state,
            keys,
            checkpoint_interval,
            full_checkpoints,
            runs,
            batch_size,
            modules,
        } => {
            let env = match job_env(&modules) {
                Ok(env) => env,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(1);
                }
            };
            let options = BenchOptions {
                workload,
                events,
                parallelism,
                state,
                keys,
                checkpoint_interval_ms: checkpoint_interval,
                full_checkpoints,
                runs,
                batch_size,
            };
            match crate::bench::run(&options, &env) {
                Ok(result) => {
                    println!(
                        "{}",
                        serde_json::to_string(&result).expect("bench results serialize")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn serve(
    listen: std::net::SocketAddr,
    data_dir: &std::path::Path,
    token: Option<String>,
    modules: &ModuleArgs,
) -> ExitCode {
    let env = match job_env(modules) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let server = match crate::api::Server::open(data_dir, env, token) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    if server.token_generated {
        eprintln!(
            "API token (stored in {}): {}",
            data_dir.join("token").display(),
            server.token
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("weir serving on http://{}", listener.local_addr()?);
        server
            .serve(listener, async {
                // SIGTERM too: it is how containers and service managers stop
                // a server.
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("a SIGTERM handler can be installed");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {listen}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Turns the first SIGINT or SIGTERM into a stop-with-savepoint.
fn stop_on_signal(handle: &JobHandle, dir: PathBuf) {
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = signalled.clone();
    let waiter = std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        });
    if waiter.is_err() {
        return;
    }
    while !handle.is_finished() {
        if signalled.load(std::sync::atomic::Ordering::SeqCst) {
            match handle.stop_with_savepoint(&dir) {
                Ok(path) => eprintln!("savepoint written: {}", path.display()),
                Err(e) => eprintln!("error: stop-with-savepoint failed: {e}"),
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn side_summary(report: &crate::runtime::JobReport) -> String {
    let mut s = String::new();
    for (name, n) in &report.side_records {
        s.push_str(&format!(", side output {name}: {n}"));
    }
    if report.unrouted_side_records > 0 {
        s.push_str(&format!(
            ", {} side-output records had no sink in the spec",
            report.unrouted_side_records
        ));
    }
    if report.late_records > 0 {
        s.push_str(&format!(
            ", {} records too late for their windows",
            report.late_records
        ));
    }
    if report.far_future_records > 0 {
        s.push_str(&format!(
            ", {} records beyond the future horizon (not moving the watermark)",
            report.far_future_records
        ));
    }
    s
}
