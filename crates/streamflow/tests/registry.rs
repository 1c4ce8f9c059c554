//! The schema registry of `streamflow serve`: driven by confluent-kafka-
//! python's own client and serde, by plain HTTP for every error code, and
//! by `streamflow schemas`.

mod common;

use std::process::Command;

use common::server::Server;
use serde_json::{Value, json};

fn client_script(args: &[&str]) -> Value {
    let script = common::root().join("crates/streamflow/tests/python/registry_client.py");
    let out = Command::new(common::python())
        .arg(script)
        .args(args)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary")
}

#[test]
fn confluents_python_client_works_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let summary = client_script(&[&server.url]);
    let ids: Vec<u64> = summary["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(ids, [1, 2, 3], "{summary}");
    // The serializer's schema equals version 1's: the same global id.
    assert_eq!(summary["wire_id"], 1, "{summary}");
    // The registry outlives the server process.
    drop(server);
    let server = Server::start(&dir.path().join("data"), &[]);
    let (code, schema) = server.call(
        "GET",
        &format!("/schemas/ids/{}", summary["json"]),
        None,
        &[],
    );
    assert_eq!(
        (code, schema["schemaType"].clone()),
        (200, json!("JSON")),
        "{schema}"
    );
}

#[test]
fn the_python_client_authenticates_with_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &["--token", "s3cret"]);
    let summary = client_script(&[&server.url, "s3cret"]);
    assert_eq!(summary["auth"], "ok");
    let (code, _) = server.call("GET", "/subjects", None, &[]);
    assert_eq!(code, 401);
}

/// `{"error_code", "message"}` of a failed call.
fn refused(server: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, i64, String) {
    let (status, answer) = server.call(method, path, body, &[]);
    (
        status,
        answer["error_code"].as_i64().unwrap_or(-1),
        answer["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn every_error_code_over_plain_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &[]);
    let avro = |fields: Value| json!({"schema": json!({"type": "record", "name": "R", "fields": fields}).to_string()});
    let v1 = avro(json!([{"name": "a", "type": "long"}]));
    let (code, registered) = server.call("POST", "/subjects/s/versions", Some(&v1), &[]);
    assert_eq!(
        (code, registered["id"].clone()),
        (200, json!(1)),
        "{registered}"
    );

    let cases: Vec<(&str, String, Option<Value>, u16, i64)> = vec![
        ("GET", "/subjects/nope/versions".into(), None, 404, 40401),
        ("GET", "/subjects/s/versions/7".into(), None, 404, 40402),
        ("GET", "/schemas/ids/99".into(), None, 404, 40403),
        (
            "POST",
            "/subjects/s".into(),
            Some(avro(json!([{"name": "z", "type": "int"}]))),
            404,
            40403,
        ),
        (
            "DELETE",
            "/subjects/s?permanent=true".into(),
            None,
            404,
            40405,
        ),
        (
            "DELETE",
            "/subjects/s/versions/1?permanent=true".into(),
            None,
            404,
            40407,
        ),
        ("GET", "/config/s".into(), None, 404, 40408),
        (
            "POST",
            "/subjects/s/versions".into(),
            Some(avro(
                json!([{"name": "a", "type": "long"}, {"name": "b", "type": "long"}]),
            )),
            409,
            409,
        ),
        (
            "POST",
            "/subjects/s/versions".into(),
            Some(json!({"schema": "{\"type\": \"record\"}"})),
            422,
            42201,
        ),
        (
            "POST",
            "/subjects/s/versions".into(),
            Some(json!({"schema": "{}", "schemaType": "XML"})),
            422,
            42201,
        ),
        ("GET", "/subjects/s/versions/zero".into(), None, 422, 42202),
        ("GET", "/subjects/s/versions/0".into(), None, 422, 42202),
        (
            "PUT",
            "/config".into(),
            Some(json!({"compatibility": "SIDEWAYS"})),
            422,
            42203,
        ),
    ];
    for (method, path, body, status, error_code) in cases {
        let (s, code, message) = refused(&server, method, &path, body.as_ref());
        assert_eq!(
            (s, code),
            (status, error_code),
            "{method} {path}: {message}"
        );
        assert!(!message.is_empty(), "{method} {path}");
    }
    // The incompatibility says why, and so does a verbose check.
    let widened = avro(json!([{"name": "a", "type": "long"}, {"name": "b", "type": "long"}]));
    let (_, check) = server.call(
        "POST",
        "/compatibility/subjects/s/versions/latest?verbose=true",
        Some(&widened),
        &[],
    );
    assert_eq!(check["is_compatible"], false);
    assert!(
        check["messages"][0]
            .as_str()
            .unwrap_or_default()
            .contains('b'),
        "{check}"
    );
    // Soft-delete states.
    assert_eq!(
        server.call("DELETE", "/subjects/s", None, &[]).1,
        json!([1])
    );
    assert_eq!(refused(&server, "DELETE", "/subjects/s", None).1, 40404);
    assert_eq!(
        refused(&server, "DELETE", "/subjects/s/versions/1", None).1,
        40406
    );
    assert_eq!(
        server
            .call("DELETE", "/subjects/s?permanent=true", None, &[])
            .1,
        json!([1])
    );
    // The registry's own media type.
    let response = reqwest_get(&format!("{}/schemas/types", server.url));
    assert_eq!(response.0, "application/vnd.schemaregistry.v1+json");
    assert_eq!(
        serde_json::from_str::<Value>(&response.1).expect("json"),
        json!(["JSON", "PROTOBUF", "AVRO"])
    );
}

/// The content type and body of a GET.
fn reqwest_get(url: &str) -> (String, String) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let r = common::http().get(url).send().await?;
            let ct = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            Ok::<_, reqwest::Error>((ct, r.text().await?))
        })
        .expect("GET")
}

#[test]
fn flow_pipe_schema_api_and_the_schemas_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    // /v1/schemas: version 0 is the active version.
    let person =
        json!({"type": "record", "name": "Person", "fields": [{"name": "id", "type": "long"}]});
    let (code, created) = server.call(
        "POST",
        "/v1/schemas",
        Some(&json!({"id": "people", "schema": person, "type": "avro"})),
        &[],
    );
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        (created["version"].clone(), created["schema_id"].clone()),
        (json!(1), json!(1))
    );
    let evolved = json!({"type": "record", "name": "Person", "fields": [
        {"name": "id", "type": "long"}, {"name": "name", "type": "string", "default": ""}]});
    server.call(
        "POST",
        "/v1/schemas",
        Some(&json!({"id": "people", "schema": evolved})),
        &[],
    );
    let (_, active) = server.call("GET", "/v1/schemas/people/versions/0", None, &[]);
    assert_eq!(active["version"], 2, "{active}");
    let (_, v1) = server.call("GET", "/v1/schemas/people/versions/1", None, &[]);
    assert_eq!(
        serde_json::from_str::<Value>(v1["schema"].as_str().expect("schema")).expect("json"),
        person
    );
    let (_, versions) = server.call("GET", "/v1/schemas/people/versions", None, &[]);
    assert_eq!(versions.as_array().map(Vec::len), Some(2));

    // The CLI: register, check, get, list, delete.
    let schemas = |args: &[&str]| {
        common::streamflow()
            .arg("schemas")
            .args(args)
            .args(["--server", &server.url])
            .output()
            .expect("schemas")
    };
    let proto = common::write(
        d,
        "order.proto",
        "syntax = \"proto3\";\npackage shop;\nmessage Order { int64 id = 1; }\n",
    );
    let out = schemas(&["register", &proto, "--subject", "orders-value"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("orders-value version 1"));
    let retyped = common::write(
        d,
        "order2.proto",
        "syntax = \"proto3\";\npackage shop;\nmessage Order { string id = 1; }\n",
    );
    let out = schemas(&["check", &retyped, "--subject", "orders-value"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("incompatible") && said.contains("field 1"),
        "{said}"
    );
    let out = schemas(&["register", &retyped, "--subject", "orders-value"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(409"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = schemas(&["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("orders-value") && listed.contains("PROTOBUF") && listed.contains("people"),
        "{listed}"
    );
    let out = schemas(&["get", "orders-value", "--json"]);
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got["schemaType"], "PROTOBUF");
    assert!(
        schemas(&["delete", "orders-value", "--permanent"])
            .status
            .success()
    );
    let (code, _) = server.call("GET", "/subjects/orders-value/versions", None, &[]);
    assert_eq!(code, 404);
    assert_eq!(
        server.call("DELETE", "/v1/schemas/people", None, &[]).0,
        204
    );
    assert_eq!(server.call("GET", "/subjects", None, &[]).1, json!([]));
}

/// A `validate` stage checks rows against a registered schema: the
/// subject's columns, types and required fields, resolved when the flow is
/// planned.
#[test]
fn validate_checks_rows_against_a_registered_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let server = Server::start(&d.join("data"), &[]);
    let orders = json!({"type": "object",
        "properties": {"id": {"type": "integer"}, "customer": {"type": "string"}},
        "required": ["id", "customer"]});
    let body = json!({"schema": orders.to_string(), "schemaType": "JSON"});
    assert_eq!(
        server
            .call("POST", "/subjects/orders-value/versions", Some(&body), &[])
            .0,
        200
    );
    let flow = format!(
        r#"name: checked
mode: job
sources:
  - name: g
    type: generator
    config: {{count: 100, columns: {{id: i, customer: "CASE WHEN i % 5 = 0 THEN NULL ELSE concat('c', i) END"}}}}
stages:
  - name: typed
    type: validate
    input: g
    dlq: bad
    schema: {{subject: orders-value, registry: "{url}"}}
sinks:
  - {{name: out, type: file, input: typed, config: {{path: "{out}"}}}}
  - {{name: bad, type: file, config: {{path: "{bad}"}}}}
"#,
        url = server.url,
        out = d.join("out.jsonl").display(),
        bad = d.join("bad.jsonl").display(),
    );
    let file = common::write(d, "checked.yaml", &flow);
    let out = common::run(&["run", &file]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(common::read_jsonl(&d.join("out.jsonl")).len(), 80);
    let bad = common::read_jsonl(&d.join("bad.jsonl"));
    assert_eq!(bad.len(), 20);
    assert!(
        bad[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("customer"),
        "{bad:?}"
    );
    // A subject that does not exist is a validation error with its path.
    let missing = flow.replace("subject: orders-value", "subject: nope-value");
    let file = common::write(d, "missing.yaml", &missing);
    let out = common::run(&["validate", &file]);
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    assert!(
        said.contains("stages[0].schema") && said.contains("nope-value"),
        "{said}"
    );
}
