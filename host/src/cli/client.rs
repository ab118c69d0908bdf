//! The CLI's side of the REST API: `weir module ...` and `weir job ...`
//! send one request each and print the answer as a table, or as JSON with
//! `--json`. Exit codes: 0 done, 1 the server refused or failed (its
//! message is printed), 3 the server could not be reached.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Subcommand;

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server (also $WEIR_SERVER).
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "WEIR_SERVER",
        global = true
    )]
    pub server: String,
    /// Bearer token for changes (also $WEIR_TOKEN; default: the token file
    /// of ./weir-data).
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the server's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ModuleCommand {
    /// Upload a component as the next version of NAME.
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// List modules and their versions.
    List,
    /// Delete a module (refused while a running job uses it).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job spec.
    Run {
        spec: PathBuf,
        #[arg(long)]
        from_savepoint: Option<String>,
        #[arg(long)]
        parallelism: Option<u32>,
        #[arg(long)]
        fresh: bool,
    },
    /// List jobs.
    List,
    /// Show one job.
    Show { name: String },
    /// Take a savepoint (waits until it is complete).
    Savepoint {
        name: String,
        /// An absolute folder or s3://bucket/prefix instead of the server's
        /// data folder.
        #[arg(long)]
        target: Option<String>,
    },
    /// Stop with a savepoint.
    Stop {
        name: String,
        /// As for `savepoint`.
        #[arg(long)]
        target: Option<String>,
    },
    /// Cancel without a savepoint.
    Cancel { name: String },
    /// Start a stopped job again with its own spec: from the savepoint it
    /// stopped with (or `--savepoint`), else its latest checkpoint.
    Resume {
        name: String,
        #[arg(long)]
        savepoint: Option<String>,
        #[arg(long)]
        parallelism: Option<u32>,
    },
    /// Change a running job's parallelism: stop with a savepoint and resume
    /// from it at `parallelism` (key groups are dealt out anew).
    Rescale { name: String, parallelism: u32 },
    /// List a job's savepoints.
    Savepoints { name: String },
    /// Swap an operator's module, keeping its state: in the running tasks at
    /// a checkpoint barrier (jobs with checkpoints), else by stop and resume;
    /// rolls back to the old module if the new one fails.
    Upgrade {
        name: String,
        operator: String,
        /// Registry module: `name` (latest) or `name@version`.
        #[arg(long)]
        module: String,
        #[arg(long, default_value = "3s")]
        probation: String,
    },
}

struct Client {
    args: ServerArgs,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

enum Failure {
    Unreachable(String),
    Refused(String),
}

impl Client {
    fn new(args: ServerArgs) -> Self {
        let token = args.token.clone().or_else(|| {
            std::fs::read_to_string("weir-data/token")
                .ok()
                .map(|t| t.trim().to_owned())
        });
        Client {
            args: ServerArgs { token, ..args },
            http: reqwest::Client::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime starts"),
        }
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<serde_json::Value, Failure> {
        self.call_showing(None, method, path, query, body)
    }

    /// A call that may take a while: with `progress`, stderr (when it is a
    /// terminal) shows the share of the body sent, then how long the
    /// server has been working.
    fn call_showing(
        &self,
        progress: Option<&str>,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<serde_json::Value, Failure> {
        let url = format!("{}{path}", self.args.server.trim_end_matches('/'));
        let mut request = self.http.request(method, &url).query(query);
        if let Some(token) = &self.args.token {
            request = request.bearer_auth(token);
        }
        let sent = Arc::new(AtomicU64::new(0));
        let total = body.as_ref().map_or(0, Vec::len) as u64;
        if let Some(body) = body {
            request = match progress {
                Some(_) => {
                    let sent = sent.clone();
                    let chunks: Vec<bytes::Bytes> = body
                        .chunks(64 << 10)
                        .map(bytes::Bytes::copy_from_slice)
                        .collect();
                    let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
                        sent.fetch_add(c.len() as u64, Ordering::Relaxed);
                        Ok::<_, std::io::Error>(c)
                    }));
                    request
                        .header(reqwest::header::CONTENT_LENGTH, total)
                        .body(reqwest::Body::wrap_stream(stream))
                }
                None => request.body(body),
            };
        }
        let exchange = async {
            let response = request
                .send()
                .await
                .map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            if status.is_success() {
                Ok(value)
            } else {
                let message = value["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| value.to_string());
                Err(Failure::Refused(format!("{status}: {message}")))
            }
        };
        self.runtime.block_on(async {
            match progress.filter(|_| std::io::stderr().is_terminal()) {
                Some(what) => show_progress(what, exchange, (&sent, total)).await,
                None => exchange.await,
            }
        })
    }
}

/// Redraws one stderr line every quarter second until `call` is done.
async fn show_progress<T>(
    what: &str,
    call: impl std::future::Future<Output = T>,
    (sent, total): (&AtomicU64, u64),
) -> T {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tokio::pin!(call);
    loop {
        tokio::select! {
            out = &mut call => {
                eprint!("\r\x1b[K");
                return out;
            }
            _ = tick.tick() => {
                let done = sent.load(Ordering::Relaxed);
                if done < total {
                    eprint!("\r\x1b[K{what}: sent {}% of {total} bytes", done * 100 / total);
                } else {
                    eprint!(
                        "\r\x1b[K{what}: waiting for the server ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("error: cannot reach the server: {m}");
            ExitCode::from(3)
        }
    }
}

fn print(json: bool, value: &serde_json::Value, table: impl FnOnce(&serde_json::Value)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON prints")
        );
    } else {
        table(value);
    }
}

pub fn module(args: ServerArgs, command: ModuleCommand) -> ExitCode {
    let json = args.json;
    let client = Client::new(args);
    finish((|| match command {
        ModuleCommand::Upload { file, name } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))?;
            eprintln!("uploading {} ({} bytes)...", file.display(), bytes.len());
            let v = client.call_showing(
                Some("uploading"),
                reqwest::Method::POST,
                "/v1/modules",
                &[("name", name.clone())],
                Some(bytes),
            )?;
            print(json, &v, |v| {
                println!(
                    "{name} version {} ({})",
                    v["version"],
                    v["digest"].as_str().unwrap_or("").get(..12).unwrap_or("")
                );
            });
            Ok(())
        }
        ModuleCommand::List => {
            let v = client.call(reqwest::Method::GET, "/v1/modules", &[], None)?;
            print(json, &v, |v| {
                println!("{:<24} {:>8} {:<14}", "MODULE", "VERSION", "DIGEST");
                for (name, versions) in v.as_object().into_iter().flatten() {
                    for ver in versions.as_array().into_iter().flatten() {
                        println!(
                            "{name:<24} {:>8} {:<14}",
                            ver["version"].to_string(),
                            ver["digest"].as_str().unwrap_or("").get(..12).unwrap_or("")
                        );
                    }
                }
            });
            Ok(())
        }
        ModuleCommand::Rm { name } => {
            client.call(
                reqwest::Method::DELETE,
                &format!("/v1/modules/{name}"),
                &[],
                None,
            )?;
            println!("deleted {name}");
            Ok(())
        }
    })())
}

fn job_row(v: &serde_json::Value) {
    println!(
        "{:<24} {:<10} {:>12} {:>8}  {}",
        v["name"].as_str().unwrap_or(""),
        v["state"].as_str().unwrap_or(""),
        v["records_in"].to_string(),
        v["restarts"].to_string(),
        v["error"]
            .as_str()
            .or(v["savepoint"].as_str())
            .unwrap_or("")
    );
}

fn job_header() {
    println!(
        "{:<24} {:<10} {:>12} {:>8}  NOTE",
        "JOB", "STATE", "RECORDS IN", "RESTARTS"
    );
}

pub fn job(args: ServerArgs, command: JobCommand) -> ExitCode {
    let json = args.json;
    let client = Client::new(args);
    finish((|| match command {
        JobCommand::Run {
            spec,
            from_savepoint,
            parallelism,
            fresh,
        } => {
            let text = std::fs::read(&spec)
                .map_err(|e| Failure::Refused(format!("{}: {e}", spec.display())))?;
            let mut query = Vec::new();
            if let Some(s) = from_savepoint {
                query.push(("from_savepoint", s));
            }
            if let Some(p) = parallelism {
                query.push(("parallelism", p.to_string()));
            }
            if fresh {
                query.push(("fresh", "true".to_string()));
            }
            let v = client.call(reqwest::Method::POST, "/v1/jobs", &query, Some(text))?;
            print_job(json, &v);
            Ok(())
        }
        JobCommand::List => {
            let v = client.call(reqwest::Method::GET, "/v1/jobs", &[], None)?;
            print(json, &v, |v| {
                job_header();
                v.as_array().into_iter().flatten().for_each(job_row);
            });
            Ok(())
        }
        JobCommand::Show { name } => {
            let v = client.call(reqwest::Method::GET, &format!("/v1/jobs/{name}"), &[], None)?;
            print(json, &v, |v| {
                job_header();
                job_row(v);
                for (op, module) in v["modules"].as_object().into_iter().flatten() {
                    println!("  operator {op}: {}", module.as_str().unwrap_or(""));
                }
            });
            Ok(())
        }
        JobCommand::Savepoint { name, target } => {
            savepoint(&client, json, &name, "savepoint", target)
        }
        JobCommand::Resume {
            name,
            savepoint,
            parallelism,
        } => {
            let mut query = Vec::new();
            if let Some(s) = savepoint {
                query.push(("savepoint", s));
            }
            if let Some(p) = parallelism {
                query.push(("parallelism", p.to_string()));
            }
            let v = client.call(
                reqwest::Method::POST,
                &format!("/v1/jobs/{name}/resume"),
                &query,
                None,
            )?;
            print_job(json, &v);
            Ok(())
        }
        JobCommand::Rescale { name, parallelism } => {
            eprintln!("rescaling {name} to {parallelism} (stop with a savepoint, resume)...");
            let v = client.call_showing(
                Some("rescale"),
                reqwest::Method::POST,
                &format!("/v1/jobs/{name}/rescale"),
                &[("parallelism", parallelism.to_string())],
                None,
            )?;
            print_job(json, &v);
            Ok(())
        }
        JobCommand::Savepoints { name } => {
            let v = client.call(
                reqwest::Method::GET,
                &format!("/v1/jobs/{name}/savepoints"),
                &[],
                None,
            )?;
            print(json, &v, |v| {
                println!("{:>6}  {:>12}  PATH", "ID", "BYTES");
                for s in v["savepoints"].as_array().into_iter().flatten() {
                    println!(
                        "{:>6}  {:>12}  {}",
                        s["id"],
                        s["size_bytes"],
                        s["path"].as_str().unwrap_or("")
                    );
                }
            });
            Ok(())
        }
        JobCommand::Stop { name, target } => savepoint(&client, json, &name, "stop", target),
        JobCommand::Upgrade {
            name,
            operator,
            module,
            probation,
        } => {
            eprintln!("upgrading {name}/{operator} to {module}...");
            let v = client.call_showing(
                Some("upgrade"),
                reqwest::Method::POST,
                &format!("/v1/jobs/{name}/operators/{operator}/upgrade"),
                &[("module", module.clone()), ("probation", probation)],
                None,
            )?;
            print(json, &v, |v| {
                let module = v["module"].as_str().unwrap_or("");
                match v["rolled_back"].as_str() {
                    Some(reason) => println!("rolled back to {module}: {reason}"),
                    None => println!("{operator} now runs {module}"),
                }
                println!("savepoint: {}", v["savepoint"].as_str().unwrap_or(""));
            });
            if v["upgraded"] == false {
                return Err(Failure::Refused(format!(
                    "the upgrade of {name}/{operator} to {module} was rolled back"
                )));
            }
            Ok(())
        }
        JobCommand::Cancel { name } => {
            client.call(
                reqwest::Method::POST,
                &format!("/v1/jobs/{name}/cancel"),
                &[],
                None,
            )?;
            println!("cancelling {name}");
            Ok(())
        }
    })())
}

/// One job as a table row, or as JSON.
fn print_job(json: bool, v: &serde_json::Value) {
    print(json, v, |v| {
        job_header();
        job_row(v);
    });
}

fn savepoint(
    client: &Client,
    json: bool,
    name: &str,
    action: &str,
    target: Option<String>,
) -> Result<(), Failure> {
    eprintln!("waiting for the savepoint of {name}...");
    let query: Vec<(&str, String)> = target.into_iter().map(|t| ("target", t)).collect();
    let v = client.call_showing(
        Some("savepoint"),
        reqwest::Method::POST,
        &format!("/v1/jobs/{name}/{action}"),
        &query,
        None,
    )?;
    print(json, &v, |v| {
        println!("savepoint: {}", v["savepoint"].as_str().unwrap_or(""))
    });
    Ok(())
}
