//! The files in deploy/: promtool accepts the Prometheus config and its alert
//! rules, the scrape of Weir keeps Weir's `job` label (`honor_labels`), every
//! panel of the Grafana dashboard has a query, the dashboard and the alerts
//! name only series that host/src/metrics.rs registers, compose runs the
//! whole stack from files that exist, and the Kubernetes StatefulSet probes
//! `/v1/health` and claims a volume for its data folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::support::repo_root;

const PROMTOOL: &str = "/usr/bin/promtool";

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &str) -> Yaml {
    let path = deploy(path);
    serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Json {
    let path = deploy("grafana/dashboards/weir.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn promtool(check: &str, file: &Path) {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install Debian's `prometheus` package (scripts/test.sh does)"
    );
    let out = Command::new(PROMTOOL)
        .args(["check", check])
        .arg(file)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check {check} {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The series host/src/metrics.rs registers: counters and gauges under their
/// name, histograms only as their `_bucket`, `_sum` and `_count` series.
fn registered_series() -> BTreeSet<String> {
    let source = read(&repo_root().join("host/src/metrics.rs"));
    let mut series = BTreeSet::new();
    // Each `register!(` holds one metric: its constructor, then its name.
    for registration in source.split("register!(").skip(1) {
        let Some((constructor, rest)) = registration.split_once("\"weir_") else {
            continue;
        };
        let name = format!("weir_{}", &rest[..rest.find('"').expect("closing quote")]);
        // `histogram(`, `HistogramVec::new(` and `Histogram::with_opts(` alike.
        if constructor.contains("istogram") {
            for suffix in ["_bucket", "_sum", "_count"] {
                series.insert(format!("{name}{suffix}"));
            }
        } else {
            series.insert(name);
        }
    }
    assert!(
        series.iter().any(|s| s.ends_with("_total"))
            && series.iter().any(|s| s.ends_with("_bucket")),
        "found no counters or no histograms in host/src/metrics.rs; its registrations changed shape: {series:?}"
    );
    series
}

/// The `weir_...` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<&str> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(at) = expr[from..].find("weir_").map(|i| from + i) {
        let end = expr[at..]
            .find(|c| !ident(c))
            .map_or(expr.len(), |i| at + i);
        if !expr[..at].ends_with(ident) {
            names.push(&expr[at..end]);
        }
        from = end;
    }
    names
}

/// Panels that show data, also those nested in rows.
fn data_panels(dashboard: &Json) -> Vec<&Json> {
    let mut panels = Vec::new();
    let mut todo: Vec<&Json> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = todo.pop() {
        if panel["type"] == "row" {
            todo.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            panels.push(panel);
        }
    }
    panels
}

fn exprs(panel: &Json) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str())
        .collect()
}

#[test]
fn promtool_accepts_the_prometheus_config_and_alert_rules() {
    promtool("config", &deploy("prometheus/prometheus.yml"));
    promtool("rules", &deploy("prometheus/alerts.yml"));
}

#[test]
fn prometheus_scrapes_weir_with_honor_labels() {
    let config = yaml("prometheus/prometheus.yml");
    let scrapes = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let weir = scrapes
        .iter()
        .find(|s| {
            s["static_configs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(|c| c["targets"].as_sequence().into_iter().flatten())
                .any(|t| t.as_str() == Some("weir:8080"))
        })
        .expect("a scrape config with target weir:8080");
    assert_eq!(
        weir["honor_labels"].as_bool(),
        Some(true),
        "without honor_labels Prometheus replaces Weir's `job` label"
    );
}

#[test]
fn dashboard_panels_all_have_queries_and_the_job_variable_exists() {
    let dashboard = dashboard();
    let panels = data_panels(&dashboard);
    assert!(!panels.is_empty(), "the dashboard has no panels");
    let without: Vec<&str> = panels
        .iter()
        .filter(|p| {
            let queries = exprs(p);
            queries.is_empty() || queries.iter().any(|q| q.trim().is_empty())
        })
        .map(|p| p["title"].as_str().unwrap_or("(untitled)"))
        .collect();
    assert!(without.is_empty(), "panels without a query: {without:?}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "job"),
        "the panels filter on $job, which is not defined"
    );
}

#[test]
fn dashboard_and_alerts_query_only_registered_metrics() {
    let dashboard = dashboard();
    let mut queries: Vec<String> = data_panels(&dashboard)
        .into_iter()
        .flat_map(exprs)
        .map(str::to_owned)
        .collect();
    queries.extend(
        dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["definition"].as_str().map(str::to_owned)),
    );
    let alerts = yaml("prometheus/alerts.yml");
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            queries.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }

    let series = registered_series();
    let names: Vec<&str> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(!names.is_empty(), "no query names a weir_ metric");
    let unknown: BTreeSet<&str> = names.into_iter().filter(|n| !series.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "not registered in host/src/metrics.rs: {unknown:?}"
    );
}

#[test]
fn compose_runs_the_whole_stack_from_files_that_exist() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    for service in ["kafka", "weir", "prometheus", "grafana"] {
        assert!(
            services[service].is_mapping(),
            "compose.yaml has no service `{service}`"
        );
    }
    let build = &services["weir"]["build"];
    let dockerfile = deploy(build["context"].as_str().expect("build.context"))
        .join(build["dockerfile"].as_str().expect("build.dockerfile"));
    assert!(dockerfile.exists(), "{} is missing", dockerfile.display());
    let mounts = services
        .as_mapping()
        .expect("services")
        .values()
        .flat_map(|s| s["volumes"].as_sequence().into_iter().flatten())
        .filter_map(Yaml::as_str);
    for mount in mounts {
        let source = mount.split(':').next().unwrap_or_default();
        if source.starts_with("./") {
            assert!(deploy(source).exists(), "compose mounts missing {source}");
        }
    }
}

#[test]
fn kubernetes_statefulset_probes_health_and_claims_its_data_volume() {
    let path = deploy("kubernetes/weir.yaml");
    let text = read(&path);
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect();
    let of_kind = |kind: &str| {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect::<Vec<_>>()
    };
    let sets = of_kind("StatefulSet");
    let [set] = sets.as_slice() else {
        panic!("expected one StatefulSet, found {}", sets.len());
    };
    let spec = &set["spec"];
    let container = &spec["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["path"].as_str(),
            Some("/v1/health"),
            "{probe}"
        );
    }
    let claim = spec["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .expect("a volumeClaimTemplate");
    let mounted = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|m| m["name"].as_str() == Some(claim) && m["mountPath"] == "/weir/data");
    assert!(mounted, "the claim `{claim}` is not mounted at /weir/data");
    let service = spec["serviceName"].as_str().expect("serviceName");
    assert!(
        of_kind("Service").iter().any(|s| {
            s["metadata"]["name"].as_str() == Some(service) && s["spec"]["clusterIP"] == "None"
        }),
        "serviceName `{service}` is not a headless Service in {}",
        path.display()
    );
}
