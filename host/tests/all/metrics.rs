//! Prometheus metrics: `GET /metrics` of a real `weir serve` process running
//! a keyed, windowed, checkpointed job passes `promtool check metrics`, holds
//! the series users watch, and a real Prometheus server started here scrapes
//! it and answers a query about the job.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{KillOnDrop, TempDir, examples_dir, free_port, wait_for_port, weir_serve};

const TOKEN: &str = "metrics-token";

fn tool(name: &str) -> &'static str {
    let path: &'static str = match name {
        "promtool" => "/usr/bin/promtool",
        _ => "/usr/bin/prometheus",
    };
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's `prometheus` package (scripts/test.sh does)"
    );
    path
}

/// A blocking GET with a fresh connection.
fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut request = client.get(url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    })
}

fn post(url: &str, body: Vec<u8>) -> (u16, String) {
    crate::support::post_with_token(url, TOKEN, body)
}

/// The value of the first sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_running_job_is_visible_in_metrics_that_promtool_accepts_and_prometheus_scrapes() {
    let tmp = TempDir::new("metrics");
    let port = free_port();
    let _server = weir_serve(port, &tmp.path("data"), TOKEN);
    let base = format!("http://127.0.0.1:{port}");
    let module = std::fs::read(examples_dir().join("window_count.wasm")).unwrap();
    let (status, body) = post(&format!("{base}/v1/modules?name=wc"), module);
    assert_eq!(status, 201, "{body}");
    let spec = format!(
        "name: watched\nparallelism: 2\n\
         source: {{type: generator, events: 100000000, keys: 500, rate: 20000}}\n\
         operators: [{{name: count, module: wc, input: key, window: {{type: tumbling, size: 100ms}}}}]\n\
         sink: {{type: discard}}\n\
         checkpoint: {{interval: 200ms, dir: {}}}\n",
        tmp.path("checkpoints").display()
    );
    let (status, body) = post(&format!("{base}/v1/jobs"), spec.into_bytes());
    assert_eq!(status, 201, "{body}");

    // Wait until the job has run, checkpointed and called its guest.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (status, text) = get(&format!("{base}/metrics"), None);
        assert_eq!(status, 200);
        let ready = sample(
            &text,
            "weir_checkpoints_total{job=\"watched\",outcome=\"completed\"}",
        )
        .is_some_and(|n| n >= 2.0);
        if ready {
            break text;
        }
        assert!(Instant::now() < deadline, "no checkpoints in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for series in [
        "weir_operator_records_in_total{job=\"watched\",operator=\"count\",task=\"0\"}",
        "weir_operator_records_in_total{job=\"watched\",operator=\"count\",task=\"1\"}",
        // Window results leave on the watermark, not on a batch.
        "weir_operator_records_out_total{job=\"watched\",operator=\"count\",task=\"0\"}",
        "weir_operator_batch_duration_seconds_count{job=\"watched\",operator=\"count\"}",
        "weir_wasm_calls_total{job=\"watched\",operator=\"count\"}",
        "weir_wasm_memory_bytes{job=\"watched\",operator=\"count\",task=\"0\"}",
        "weir_last_checkpoint_id{job=\"watched\"}",
        "weir_checkpoint_size_bytes{job=\"watched\"}",
        "weir_module_compile_duration_seconds_count",
        "weir_jobs_running",
    ] {
        let value = sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
        assert!(value > 0.0, "{series} is {value}");
    }
    assert!(
        text.contains("weir_watermark_seconds{job=\"watched\""),
        "watermarks are exported:\n{text}"
    );

    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes the server; `honor_labels` keeps Weir's own
    // `job` label instead of renaming it to `exported_job`.
    let prom_port = free_port();
    let config = tmp.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: weir\n    honor_labels: true\n    \
             static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        ),
    )
    .unwrap();
    let _prometheus = KillOnDrop(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(prom_port, "prometheus");
    let query = "sum(weir_operator_records_in_total{job=\"watched\",operator=\"count\"})";
    let url = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query={}",
        query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&url, None);
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let value = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if let Some(records) = value {
                assert!(records > 0.0, "{body}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never returned the series: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (status, body) = post(&format!("{base}/v1/jobs/watched/cancel"), Vec::new());
    assert!(status == 200 || status == 202, "{status} {body}");
}
