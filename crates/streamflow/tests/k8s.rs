//! `streamflow k8s render` and `deploy/`: the resources are checked against
//! Kubernetes' own schemas (`kubernetes-validate --strict`, installed by
//! `.ci/run` into the test venv; no cluster runs here), and the flow a
//! rendered ConfigMap carries is a valid flow.

mod common;

use std::path::Path;
use std::process::Command;

use common::{root, run, stderr, stdout};

/// `kubernetes-validate --strict` on `file`: every resource must validate.
fn assert_valid_resources(file: &Path) {
    let python = common::python();
    let tool = Path::new(&python).with_file_name("kubernetes-validate");
    let out = Command::new(&tool)
        .args(["--strict", "--kubernetes-version", "1.30.0"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (.ci/run installs it)", tool.display()));
    assert!(
        out.status.success(),
        "{} does not validate:\n{}{}",
        file.display(),
        stdout(&out),
        stderr(&out)
    );
}

/// The resources of a rendered stream, as JSON values.
fn resources(yaml: &str) -> Vec<serde_json::Value> {
    yaml.split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).expect("a YAML resource"))
        .collect()
}

fn render(args: &[&str]) -> String {
    let mut all = vec!["k8s", "render"];
    all.extend(args);
    let out = run(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn a_job_flow_renders_as_a_job_with_a_checkpoint_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = root().join("examples/exactly_once.yaml");
    let yaml = render(&[
        flow.to_str().expect("path"),
        "--image",
        "registry.example/streamflow:0.1.0",
        "--namespace",
        "streams",
    ]);
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, &yaml).expect("write");
    assert_valid_resources(&file);
    let rs = resources(&yaml);
    let kinds: Vec<&str> = rs.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "PersistentVolumeClaim", "Job"]);
    assert!(rs.iter().all(|r| r["metadata"]["namespace"] == "streams"));
    let job = &rs[2];
    assert_eq!(job["metadata"]["name"], "exactly-once");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "OnFailure");
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example/streamflow:0.1.0"
    );
    assert_eq!(
        pod["volumes"][1]["persistentVolumeClaim"]["claimName"],
        "exactly-once-state"
    );

    // The flow in the ConfigMap is the file's, its checkpoints on the
    // volume, and it is a valid flow.
    let carried = rs[0]["data"]["flow.yaml"].as_str().expect("flow.yaml");
    let carried_file = dir.path().join("carried.yaml");
    std::fs::write(&carried_file, carried).expect("write");
    let out = run(&["validate", carried_file.to_str().expect("path")]);
    assert!(out.status.success(), "{}\n{carried}", stderr(&out));
    let doc: serde_json::Value = serde_saphyr::from_str(carried).expect("flow yaml");
    assert_eq!(
        doc["checkpoint"]["storage"],
        "/var/lib/streamflow/checkpoints"
    );
    assert_eq!(doc["stages"][0]["key_by"][0], "auction");
}

#[test]
fn a_streaming_flow_renders_as_a_single_pod_deployment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = root().join("examples/exactly_once.yaml");
    let yaml = render(&[
        flow.to_str().expect("path"),
        "--set",
        "mode=streaming",
        "--name",
        "Bids Per Auction",
    ]);
    let file = dir.path().join("deployment.yaml");
    std::fs::write(&file, &yaml).expect("write");
    assert_valid_resources(&file);
    let rs = resources(&yaml);
    let deployment = rs
        .iter()
        .find(|r| r["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deployment["metadata"]["name"], "bids-per-auction");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"]["type"], "Recreate",
        "never two writers at once"
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "run");
    assert_eq!(container["ports"][0]["containerPort"], 9464);
    let carried: serde_json::Value =
        serde_saphyr::from_str(rs[0]["data"]["flow.yaml"].as_str().expect("flow")).expect("yaml");
    assert_eq!(carried["mode"], "streaming", "overrides are baked in");
}

#[test]
fn a_bad_flow_is_not_rendered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flow = common::write(
        dir.path(),
        "bad.yaml",
        "name: b\nsources:\n  - {name: s, type: generator, confg: {}}\nsinks: []\n",
    );
    let out = run(&["k8s", "render", &flow]);
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty(), "nothing rendered");
    assert!(stderr(&out).contains("sources[0]"), "{}", stderr(&out));
}

#[test]
fn the_deploy_manifests_validate() {
    for name in ["nats.yaml", "serve.yaml", "workers.yaml"] {
        assert_valid_resources(&root().join("deploy").join(name));
    }
}
