//! The deployment files hold together: the Kubernetes manifests validate
//! against the API schemas (kubernetes-validate, strict) and agree with each
//! other and with tally (the ConfigMap's TOML loads, the hostfile names every
//! pod, probes and ports meet the metrics endpoint, every secret is a variable
//! tally reads); the systemd unit passes `systemd-analyze verify`; the Grafana
//! dashboard asks only for metrics tally exports.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::repo;

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every manifest as JSON, through the YAML parser kubernetes-validate uses.
fn manifests() -> Vec<Value> {
    let script = "import json, sys, yaml\nprint(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))";
    let output = Command::new("python3").arg("-c").arg(script).args(k8s_files()).output().expect("python3 runs");
    assert!(output.status.success(), "cannot parse the manifests:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn of_kind<'a>(manifests: &'a [Value], kind: &str) -> &'a Value {
    manifests.iter().find(|m| m["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/k8s"))
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("a string, found {value}"))
}

fn tally_help() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tally")).args(["run", "--help"]).output().unwrap();
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_kubernetes_manifests_validate_against_the_api_schemas() {
    let resources: Vec<PathBuf> = k8s_files().into_iter().filter(|f| !f.ends_with("kustomization.yaml")).collect();
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&resources)
        .output()
        .expect("kubernetes-validate runs: install it with deploy/local/up.sh");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}");
    assert_eq!(report.matches(" passed for resource ").count(), resources.len(), "{report}");
}

#[test]
fn the_kubernetes_manifests_agree_with_each_other_and_with_tally() {
    let manifests = manifests();
    let listed: BTreeSet<String> = of_kind(&manifests, "Kustomization")["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| text(r).to_owned())
        .collect();
    let present: BTreeSet<String> = k8s_files()
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml must list every manifest");

    let set = of_kind(&manifests, "StatefulSet");
    let (name, service_name) = (text(&set["metadata"]["name"]), text(&set["spec"]["serviceName"]));
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = |name: &str| {
        container["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };

    let service = of_kind(&manifests, "Service");
    assert_eq!(text(&service["metadata"]["name"]), service_name);
    assert_eq!(service["spec"]["clusterIP"], "None", "the Service must be headless");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true, "peers must resolve before they are ready");

    let config_map = of_kind(&manifests, "ConfigMap");
    let hosts: Vec<&str> = text(&config_map["data"]["hosts"]).lines().collect();
    let expected: Vec<String> =
        (0..replicas).map(|i| format!("{name}-{i}.{service_name}:{}", port("timely"))).collect();
    assert_eq!(hosts, expected, "the hostfile must name every pod in ordinal order");

    let dir = std::env::temp_dir().join(format!("tally-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("tally.toml");
    std::fs::write(&toml, text(&config_map["data"]["tally.toml"])).unwrap();
    let overrides = tally::config::Overrides { config: Some(toml), ..Default::default() };
    let config = overrides.load().unwrap_or_else(|e| panic!("the ConfigMap's tally.toml: {e}"));
    config.settings().unwrap();
    config.epoch_interval().unwrap();
    assert!(config.checkpoint.url.starts_with("s3://"), "a cluster across machines needs a shared checkpoint store");
    let metrics_port: u64 = config.metrics.listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(metrics_port, port("metrics"));
    assert!(config.metrics.listen.starts_with("0.0.0.0:"), "probes reach the pod's address, not its loopback");
    std::fs::remove_dir_all(dir).unwrap();

    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "metrics");
    }

    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(text).collect();
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "config").unwrap();
    let mounted = text(&mount["mountPath"]);
    let value_of = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]).unwrap();
    assert_eq!(args[0], "run");
    assert_eq!(value_of("--config"), format!("{mounted}/tally.toml"));
    assert_eq!(value_of("--hostfile"), format!("{mounted}/hosts"));
    let help = tally_help();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "tally run has no {flag}");
    }
    let process = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "TALLY_PROCESS").unwrap();
    assert_eq!(process["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['apps.kubernetes.io/pod-index']");

    let secret = of_kind(&manifests, "Secret");
    assert_eq!(container["envFrom"][0]["secretRef"]["name"], secret["metadata"]["name"]);
    for key in secret["stringData"].as_object().unwrap().keys() {
        let read =
            if key.starts_with("TALLY_") { help.contains(&format!("env: {key}")) } else { key.starts_with("AWS_") };
        assert!(read, "tally reads no variable {key}");
    }

    let budget = of_kind(&manifests, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["selector"]["matchLabels"], set["spec"]["selector"]["matchLabels"]);
    assert_eq!(set["spec"]["template"]["metadata"]["labels"], set["spec"]["selector"]["matchLabels"]);
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/tally@.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart line");
    let help = tally_help();
    for flag in exec.split_whitespace().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "tally run has no {flag}");
    }
    // Verified as installed, with the binary this build made.
    let dir = std::env::temp_dir().join(format!("tally-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let installed = unit.replace("/usr/local/bin/tally", env!("CARGO_BIN_EXE_tally"));
    std::fs::write(dir.join("tally@0.service"), installed).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("tally@0.service"))
        .output()
        .expect("systemd-analyze runs: deploy/local/up.sh installs it");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    std::fs::remove_dir_all(dir).unwrap();
    assert!(output.status.success() && report.trim().is_empty(), "systemd-analyze verify:\n{report}");
}

#[test]
fn the_grafana_dashboard_asks_only_for_exported_metrics() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/tally.json")).unwrap())
        .expect("the dashboard is JSON");
    // Families with labels appear once they have a child: give each one.
    let metrics = tally::metrics::Metrics::new(1);
    metrics.set_next_offset(0, 1);
    metrics.set_end_offset(0, 2);
    metrics.count_outcomes(&tally_dataflows::rows::Outcomes { accepted: 1, duplicates: 1 });
    metrics.count_rejection("late");
    metrics.observe_checkpoint("shard", std::time::Duration::from_millis(1));
    metrics.observe_insert("usage_breakdown", 1, std::time::Duration::from_millis(1));
    let exposition = metrics.encode();
    let mut exported = BTreeSet::new();
    for line in exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        exported.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
    }
    assert!(exported.len() >= 20, "{exposition}");

    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    let mut asked = BTreeSet::new();
    for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
        let expr = text(&target["expr"]);
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("tally_") {
                assert!(exported.contains(word), "the dashboard asks for {word}, which tally does not export");
                asked.insert(word.to_owned());
            }
        }
    }
    for family in
        ["tally_partition_lag", "tally_freshness_seconds_bucket", "tally_events_total", "tally_watermark_seconds"]
    {
        assert!(asked.contains(family), "the dashboard does not show {family}");
    }
}
