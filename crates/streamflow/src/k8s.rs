//! Kubernetes resources for one flow (`streamflow k8s render`): a ConfigMap
//! holding the flow, and a Deployment for a streaming flow or a Job for a
//! job-mode one, as flow-pipe runs flows. A flow with checkpoints on a
//! local path gets a PersistentVolumeClaim for them, so a restarted pod
//! resumes where the last one stopped; object-store checkpoint storage
//! (`s3://…`, `gs://…`) is left as it is. The pod serves the run's metrics
//! on port 9464 (`/metrics`, Prometheus text), which also tells Kubernetes
//! it is ready. Variables of an optional Secret `<flow>-env` are in the
//! environment (passwords named by `password_env`, tokens).

use serde_json::json;
use streamflow_dsl::{FlowSpec, Mode};

/// Where the flow file is mounted in the pod.
const FLOW_DIR: &str = "/etc/streamflow";
/// Where checkpoints go in the pod (the claim's mount).
const STATE_DIR: &str = "/var/lib/streamflow";
/// The metrics port.
const METRICS_PORT: u16 = 9464;

/// How to render.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The container image with the `streamflow` binary.
    pub image: String,
    /// Namespace of every resource (none: the one `kubectl` applies to).
    pub namespace: Option<String>,
    /// Name of the resources (default: the flow's name).
    pub name: Option<String>,
    /// Size of the checkpoint volume.
    pub storage: String,
    /// CPU the pod asks for (and may use at most twice of).
    pub cpu: String,
    /// Memory the pod asks for and may use.
    pub memory: String,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            image: format!("streamflow:{}", env!("CARGO_PKG_VERSION")),
            namespace: None,
            name: None,
            storage: "1Gi".into(),
            cpu: "1".into(),
            memory: "1Gi".into(),
        }
    }
}

/// A DNS-1123 label made of `name`: lower case, digits and `-`, at most
/// 50 characters (room for the suffixes of derived names).
fn resource_name(name: &str) -> Result<String, String> {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(50).collect();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        return Err(format!(
            "'{name}' gives no Kubernetes name: give one with --name"
        ));
    }
    Ok(out)
}

/// Whether checkpoint storage is a local path (rather than an object store).
fn is_local_path(storage: &str) -> bool {
    !storage.contains("://") || storage.starts_with("file://")
}

/// The resources running `spec`, as YAML documents separated by `---`.
///
/// # Errors
/// A flow or option that gives no valid Kubernetes name.
pub fn render(spec: &FlowSpec, options: &RenderOptions) -> Result<String, String> {
    let flow_name = options
        .name
        .clone()
        .or_else(|| spec.name.clone())
        .ok_or("the flow has no name: give one with --name")?;
    let name = resource_name(&flow_name)?;
    let labels = json!({
        "app.kubernetes.io/name": "streamflow",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "flow",
    });
    let metadata = |suffix: &str| {
        let mut m = json!({"name": format!("{name}{suffix}"), "labels": labels});
        if let Some(ns) = &options.namespace {
            m["namespace"] = json!(ns);
        }
        m
    };

    let mut document = spec.to_document();
    let local_checkpoints = spec
        .checkpoint
        .as_ref()
        .is_some_and(|c| c.storage.as_deref().is_none_or(is_local_path));
    if local_checkpoints {
        document["checkpoint"]["storage"] = json!(format!("{STATE_DIR}/checkpoints"));
    }
    let flow_yaml = serde_saphyr::to_string(&document).map_err(|e| e.to_string())?;

    let mut resources = vec![json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata("-flow"),
        "data": {"flow.yaml": flow_yaml},
    })];
    let mut volumes = vec![json!({"name": "flow", "configMap": {"name": format!("{name}-flow")}})];
    let mut mounts = vec![json!({"name": "flow", "mountPath": FLOW_DIR, "readOnly": true})];
    if local_checkpoints {
        resources.push(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": metadata("-state"),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": options.storage}},
            },
        }));
        volumes.push(json!({"name": "state", "persistentVolumeClaim": {"claimName": format!("{name}-state")}}));
        mounts.push(json!({"name": "state", "mountPath": STATE_DIR}));
    }
    let container = json!({
        "name": "streamflow",
        "image": options.image,
        "args": ["run", format!("{FLOW_DIR}/flow.yaml"), "--quiet", "--metrics", format!("0.0.0.0:{METRICS_PORT}")],
        "env": [{"name": "STREAMFLOW_LOG", "value": "info"}],
        "envFrom": [{"secretRef": {"name": format!("{name}-env"), "optional": true}}],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": options.cpu, "memory": options.memory},
            "limits": {"memory": options.memory},
        },
        "volumeMounts": mounts,
    });
    let pod = |restart: &str| {
        json!({
            "metadata": {
                "labels": labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": METRICS_PORT.to_string(),
                },
            },
            "spec": {
                "restartPolicy": restart,
                "containers": [container],
                "volumes": volumes,
            },
        })
    };
    resources.push(match spec.mode {
        // One process per flow, and never two at once (a new pod starts
        // after the old one stopped): its checkpoints and exactly-once
        // sinks assume a single writer.
        Mode::Streaming => json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(""),
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": pod("Always"),
            },
        }),
        Mode::Job => json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata(""),
            "spec": {
                "backoffLimit": 6,
                "template": pod("OnFailure"),
            },
        }),
    });
    let mut out = String::new();
    for resource in &resources {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(resource).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The name a resource of `resources` (rendered YAML) of `kind` has.
#[cfg(test)]
fn names_of(resources: &str, kind: &str) -> Vec<String> {
    resources
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .filter_map(|d| serde_saphyr::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v["kind"] == kind)
        .filter_map(|v| v["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(
            resource_name("Orders_To Redis!").as_deref(),
            Ok("orders-to-redis")
        );
        assert!(resource_name("__").is_err());
        assert!(resource_name(&"x".repeat(80)).is_ok_and(|n| n.len() == 50));
    }

    #[test]
    fn object_store_checkpoints_get_no_volume() {
        let mut spec = streamflow_dsl::PipelineBuilder::new("s3-flow")
            .source("g", "generator", json!({"count": 1}))
            .sink("o", "blackhole", json!({}))
            .build();
        spec.checkpoint =
            serde_json::from_value(json!({"interval": "1s", "storage": "s3://bucket/ckpt"})).ok();
        let out = render(&spec, &RenderOptions::default()).expect("render");
        assert!(names_of(&out, "PersistentVolumeClaim").is_empty(), "{out}");
        assert!(out.contains("s3://bucket/ckpt"), "{out}");
        assert_eq!(names_of(&out, "Job"), vec!["s3-flow".to_string()]);
    }
}
