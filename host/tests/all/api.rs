//! The REST API against the real server on 127.0.0.1 with a real HTTP
//! client: module uploads and their validation, the job life cycle
//! (submit, savepoint, stop, resume at another parallelism), refusals, and
//! a server process that is killed and restarted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{
    TempDir, assert_same_output, committed_lines, env, examples_dir, expected_counts, fixtures_dir,
    keyed_output,
};

const TOKEN: &str = "test-token";

/// A blocking HTTP client over reqwest.
struct Http {
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Http {
    fn new(base: String) -> Self {
        Http {
            base,
            // A fresh connection per request: a pooled one may belong to a
            // server process that was killed since.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        self.runtime.block_on(async {
            let response = r.send().await.expect("the server answers");
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None)
    }

    fn post(&self, path: &str, body: Option<Vec<u8>>) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(TOKEN), body)
    }

    /// Polls a job until `done` says so.
    fn wait_job(&self, name: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{name}"));
            assert_eq!(status, StatusCode::OK, "{job}");
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {name} stuck: {job}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A server in this process, stopped when dropped.
struct InProcess {
    http: Http,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    fn start(data_dir: &Path) -> Self {
        let server = weir::api::Server::open(data_dir, env(), Some(TOKEN.into())).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                server
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        InProcess {
            http: Http::new(format!("http://{addr}")),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wasm(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(format!("{name}.wasm"))).unwrap()
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

#[test]
fn uploads_are_validated_versioned_and_refused_with_the_reason() {
    let tmp = TempDir::new("api-modules");
    let s = InProcess::start(&tmp.path("data"));
    let http = &s.http;
    let good = wasm(examples_dir(), "keyed_count");

    let (status, v) = http.call(
        Method::POST,
        "/v1/modules?name=kc",
        None,
        Some(good.clone()),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(error_of(&v).contains("Bearer"), "{v}");
    let (status, _) = http.call(
        Method::POST,
        "/v1/modules?name=kc",
        Some("nope"),
        Some(good.clone()),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, v) = http.post("/v1/modules?name=junk", Some(b"not wasm at all".to_vec()));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("junk"), "{v}");
    let (status, v) = http.post(
        "/v1/modules?name=other",
        Some(wasm(fixtures_dir(), "wrong_world")),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("other"), "{v}");
    let (status, v) = http.post("/v1/modules?name=..%2Fescape", Some(good.clone()));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = http.post("/v1/modules?name=huge", Some(vec![0u8; 65 << 20]));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, v) = http.post("/v1/modules?name=kc", Some(good.clone()));
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 1);
    let (_, v) = http.post("/v1/modules?name=kc", Some(good));
    assert_eq!(v["version"], 2);
    let (status, v) = http.get("/v1/modules");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["kc"].as_array().unwrap().len(), 2, "{v}");
    assert!(v.get("junk").is_none() && v.get("other").is_none(), "{v}");
    let (status, v) = http.get("/v1/openapi.json");
    assert_eq!(status, StatusCode::OK);
    assert!(v["paths"]["/v1/jobs/{name}/stop"].is_object(), "{v}");
}

fn job_yaml(name: &str, events: u64, keys: u64, out: &Path, checkpoints: &Path) -> String {
    format!(
        "name: {name}\nparallelism: 2\n\
         source: {{type: generator, events: {events}, keys: {keys}, rate: 40000}}\n\
         operators: [{{name: count, module: kc, input: key}}]\n\
         sink: {{type: directory, path: {}, format: {{key: u64, value: u64}}}}\n\
         checkpoint: {{interval: 200ms, dir: {}}}\n",
        out.display(),
        checkpoints.display()
    )
}

#[test]
fn a_job_takes_savepoints_stops_and_resumes_at_another_parallelism() {
    let tmp = TempDir::new("api-jobs");
    let s = InProcess::start(&tmp.path("data"));
    let http = &s.http;
    let (status, _) = http.post(
        "/v1/modules?name=kc",
        Some(wasm(examples_dir(), "keyed_count")),
    );
    assert_eq!(status, StatusCode::CREATED);
    let out = tmp.path("out");
    let (events, keys) = (300_000, 73);
    let spec = job_yaml("counts", events, keys, &out, &tmp.path("checkpoints"));

    let (status, v) = http.post("/v1/jobs", Some(b"name: x\nsource: {type: nope}".to_vec()));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("source"), "{v}");
    let (status, v) = http.post(
        "/v1/jobs",
        Some(spec.replace("module: kc", "module: missing").into_bytes()),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("missing"), "{v}");

    let (status, v) = http.post("/v1/jobs", Some(spec.clone().into_bytes()));
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["modules"]["count"], "kc@1");
    let (status, v) = http.post("/v1/jobs", Some(spec.into_bytes()));
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = http.call(Method::DELETE, "/v1/modules/kc", Some(TOKEN), None);
    assert_eq!(status, StatusCode::CONFLICT, "{v}");

    http.wait_job("counts", |j| j["records_in"].as_u64() > Some(20_000));
    // Bad requests while the job runs are refused with the reason and leave
    // it alone (its exact output at the end shows it).
    let (status, v) = http.post("/v1/modules?name=kc", Some(b"not wasm".to_vec()));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = http.post(
        "/v1/jobs",
        Some(
            b"name: y
source: {type: nope}"
                .to_vec(),
        ),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = http.call(Method::POST, "/v1/jobs/counts/stop", None, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, v) = http.get("/v1/jobs/counts");
    assert_eq!(
        (status, &v["state"]),
        (StatusCode::OK, &Value::from("running")),
        "{v}"
    );
    let (status, v) = http.post("/v1/jobs/counts/savepoint", None);
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(
        PathBuf::from(v["savepoint"].as_str().unwrap())
            .join("manifest.json")
            .is_file()
    );
    let (status, v) = http.get("/v1/jobs/counts/checkpoints");
    assert_eq!(status, StatusCode::OK, "{v}");

    // Rescale: refused with the field named when the spec cannot take it,
    // else the job goes on at the new parallelism from a savepoint.
    let (status, v) = http.post("/v1/jobs/counts/rescale?parallelism=0", None);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("parallelism"), "{v}");
    let (status, v) = http.post("/v1/jobs/counts/rescale?parallelism=1", None);
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["parallelism"], 1, "{v}");
    let job = http.wait_job("counts", |j| j["records_in"].as_u64() > Some(10_000));
    assert_eq!(job["state"], "running", "{job}");
    // One call shows the job: graph, live figures, latest checkpoint.
    assert!(job["latest_checkpoint"].as_u64().is_some(), "{job}");
    let nodes = job["graph"]["nodes"].as_array().expect("graph nodes");
    assert!(
        nodes
            .iter()
            .any(|n| n["name"] == "count" && n["parallelism"] == 1),
        "{job}"
    );
    assert!(job["figures"]["nodes"].is_object(), "{job}");
    let (status, v) = http.get("/v1/jobs/counts/savepoints");
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["savepoints"].as_array().map(Vec::len), Some(2), "{v}");

    // Stop with the savepoint in a folder of the caller's choosing (Flink's
    // `target-directory`); a relative one is refused with its name.
    let (status, v) = http.post("/v1/jobs/counts/stop?target=elsewhere", None);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_of(&v).contains("`elsewhere`"), "{v}");
    let target = tmp.path("chosen");
    let (status, v) = http.post(
        &format!("/v1/jobs/counts/stop?target={}", target.display()),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{v}");
    let savepoint = v["savepoint"].as_str().unwrap().to_owned();
    assert!(savepoint.starts_with(target.to_str().unwrap()), "{v}");
    let job = http.wait_job("counts", |j| j["state"] != "running");
    assert_eq!(job["state"], "stopped", "{job}");
    let (status, _) = http.post("/v1/jobs/counts/stop", None);
    assert_eq!(status, StatusCode::CONFLICT);

    // Resume: the job's own spec, from the savepoint it stopped with.
    let (status, v) = http.post("/v1/jobs/counts/resume?parallelism=3", None);
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["parallelism"], 3, "{v}");
    let (status, v) = http.post("/v1/jobs/counts/resume", None);
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let job = http.wait_job("counts", |j| j["state"] != "running");
    assert_eq!(job["state"], "finished", "{job}");
    assert_eq!(job["restored_from"], savepoint.as_str(), "{job}");
    assert_same_output(
        &keyed_output(&committed_lines(&out)),
        &expected_counts(events, keys),
        "rescaled through the API from 2 to 1, stopped, resumed at 3",
    );
}

#[test]
fn a_killed_server_restarts_with_its_modules_and_resumes_its_jobs() {
    let tmp = TempDir::new("api-restart");
    let data = tmp.path("data");
    let port = crate::support::free_port();
    let start = || crate::support::weir_serve(port, &data, TOKEN);
    let http = Http::new(format!("http://127.0.0.1:{port}"));
    let server = start();
    let (status, _) = http.post(
        "/v1/modules?name=kc",
        Some(wasm(examples_dir(), "keyed_count")),
    );
    assert_eq!(status, StatusCode::CREATED);
    let out = tmp.path("out");
    let (events, keys) = (200_000, 31);
    let spec = job_yaml("survivor", events, keys, &out, &tmp.path("checkpoints"));
    let (status, v) = http.post("/v1/jobs", Some(spec.into_bytes()));
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = http.get("/v1/jobs/survivor/checkpoints");
        if v["complete"].as_array().is_some_and(|c| !c.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);

    let server = start();
    let (_, modules) = http.get("/v1/modules");
    assert_eq!(modules["kc"].as_array().map(Vec::len), Some(1), "{modules}");
    let job = http.wait_job("survivor", |j| j["state"] != "running");
    assert_eq!(job["state"], "finished", "{job}");
    assert!(
        job["restored_from"].is_string(),
        "resumed from a checkpoint: {job}"
    );
    drop(server);
    assert_same_output(
        &keyed_output(&committed_lines(&out)),
        &expected_counts(events, keys),
        "across a killed server",
    );
}

#[test]
fn an_operator_is_swapped_in_place_and_a_failing_version_is_rolled_back() {
    let tmp = TempDir::new("api-upgrade");
    let s = InProcess::start(&tmp.path("data"));
    let http = &s.http;
    for module in ["keyed_count", "keyed_count_v2", "keyed_count_broken"] {
        let dir = if module == "keyed_count" {
            examples_dir()
        } else {
            fixtures_dir()
        };
        let (status, v) = http.post("/v1/modules?name=kc", Some(wasm(dir, module)));
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let out = tmp.path("out");
    let (events, keys) = (300_000, 53);
    let spec = job_yaml("swap", events, keys, &out, &tmp.path("checkpoints"))
        .replace("module: kc", "module: kc@1");
    let (status, v) = http.post("/v1/jobs", Some(spec.into_bytes()));
    assert_eq!(status, StatusCode::CREATED, "{v}");
    http.wait_job("swap", |j| j["records_in"].as_u64() > Some(20_000));

    let (status, v) = http.post("/v1/jobs/swap/operators/nope/upgrade?module=kc@2", None);
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = http.post(
        "/v1/jobs/swap/operators/count/upgrade?module=kc@3&probation=2s",
        None,
    );
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["upgraded"], false, "{v}");
    assert_eq!(v["mode"], "in-place", "{v}");
    assert!(
        v["rolled_back"]
            .as_str()
            .unwrap_or("")
            .contains("cannot handle count"),
        "{v}"
    );
    assert_eq!(v["module"], "kc@1", "{v}");
    let job = http.wait_job("swap", |j| j["state"] == "running");
    assert_eq!(job["modules"]["count"], "kc@1", "{job}");

    http.wait_job("swap", |j| j["records_in"].as_u64() > Some(10_000));
    let (status, v) = http.post(
        "/v1/jobs/swap/operators/count/upgrade?module=kc@2&probation=1s",
        None,
    );
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["upgraded"], true, "{v}");
    assert_eq!(v["module"], "kc@2", "{v}");
    let job = http.wait_job("swap", |j| j["state"] != "running");
    assert_eq!(job["state"], "finished", "{job}");
    // The rollback was a restart from the swap's checkpoint; the swap
    // itself was not. Both are in the job's history.
    assert_eq!(job["restarts"], 1, "{job}");
    let history = job["history"].as_array().expect("history").clone();
    assert_eq!(history.len(), 2, "{job}");
    assert!(
        history[0]["event"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{job}"
    );
    assert!(
        history[1]["event"]
            .as_str()
            .unwrap()
            .contains("swapped from kc@1 to kc@2"),
        "{job}"
    );

    // Each key's counts continue across both swaps and the rollback, and
    // nothing is lost or repeated.
    crate::support::assert_upgraded_counts(
        &committed_lines(&out),
        (events, keys),
        "swapped to a broken version (rolled back), then to v2",
    );
}
