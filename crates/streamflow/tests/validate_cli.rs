//! `streamflow validate`: every rule reports a path-qualified message, and
//! all problems of a file are reported in one run.

mod common;

use common::{run, stderr, stdout, write};

fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "flow.yaml", yaml);
    let out = run(&["validate", &path]);
    (out.status.success(), stderr(&out))
}

fn assert_errors(yaml: &str, expected: &[&str]) {
    let (ok, err) = validate(yaml);
    assert!(!ok, "expected failure, got success");
    for e in expected {
        assert!(err.contains(e), "missing `{e}` in:\n{err}");
    }
}

const SOURCE: &str = "sources: [{name: bids, type: nexmark, config: {events: 10, table: bid}}]\n";

#[test]
fn valid_file_prints_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "ok.yaml",
        &format!(
            "name: ok\nmode: job\n{SOURCE}stages: [{{name: f, type: filter, input: bids, where: 'price > 5'}}]\nsinks: [{{name: out, type: blackhole, input: f}}]\n"
        ),
    );
    let out = run(&["validate", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ok: valid (job mode)"), "{text}");
    assert!(text.contains("price: Int64"), "{text}");
}

#[test]
fn structural_rules_all_reported_together() {
    assert_errors(
        "mode: job\nsources:\n  - {name: bids, type: nexmark, parallelism: 0, config: {events: 10, table: bid}}\n  - {type: nexmark}\nstages:\n  - {name: a, type: filter, input: bidz, where: 'true', queue: {capacity: 0}}\n  - {name: a, type: filter, input: bids, where: 'true'}\n  - {name: c, type: filter, where: 'true'}\nsinks:\n  - {name: out, type: blackhole}\n  - {name: o2, type: blackhole, input: out}\n",
        &[
            "error: name: required",
            "error: sources[0].parallelism: must be at least 1 (got 0)",
            "error: sources[1].name: required",
            "error: stages[0].input: unknown input 'bidz' (did you mean 'bids'?)",
            "error: stages[0].queue.capacity: must be greater than 0 (got 0)",
            "error: stages[1].name: duplicate name 'a' (also used by stages[0])",
            "error: stages[2].input: required",
            "error: sinks[0].input: required",
            "error: sinks[1].input: 'out' is a sink and has no output",
        ],
    );
}

#[test]
fn cycles_are_rejected() {
    assert_errors(
        &format!(
            "name: c\n{SOURCE}stages:\n  - {{name: a, type: union, input: [bids, b]}}\n  - {{name: b, type: filter, input: a, where: 'true'}}\nsinks: [{{name: out, type: blackhole, input: b}}]\n"
        ),
        &["cycle: "],
    );
}

#[test]
fn source_with_input_and_unknown_fields_are_errors() {
    assert_errors(
        "name: u\nsources: [{name: bids, type: nexmark, input: x}]\nsinks: [{name: out, type: blackhole, input: bids, confg: {}}]\n",
        &[
            "sources[0].input: unknown field 'input'",
            "sinks[0].confg: unknown field 'confg' (did you mean 'config'?)",
        ],
    );
}

#[test]
fn expressions_are_type_checked_with_suggestions() {
    assert_errors(
        &format!(
            "name: e\nmode: job\n{SOURCE}stages:\n  - {{name: f, type: filter, input: bids, where: 'prise > 5'}}\n  - {{name: g, type: filter, input: bids, where: 'price + 1'}}\n  - {{name: m, type: map, input: bids, map: {{x: 'lowr(channel)', y: 'price *'}}}}\n  - {{name: k, type: filter, input: bids, where: 'true', key_by: [auctionn]}}\nsinks: [{{name: out, type: blackhole, input: f}}]\n"
        ),
        &[
            "stages[0].where: column 'prise' not found (did you mean 'price'?)",
            "stages[1].where: `price + 1` must be a boolean expression",
            "stages[2].map.x: unknown function 'lowr' (did you mean 'lower'?)",
            "stages[2].map.y: invalid expression `price *`",
            "stages[3].key_by[0]: column 'auctionn' not found (did you mean 'auction'?)",
        ],
    );
}

#[test]
fn unknown_types_and_stage_fields() {
    assert_errors(
        &format!(
            "name: t\nmode: job\n{SOURCE}stages:\n  - {{name: f, type: fitler, input: bids}}\n  - {{name: g, type: filter, input: bids, wher: 'true'}}\nsinks: [{{name: out, type: blackhol, input: bids}}]\n"
        ),
        &[
            "stages[0].type: unknown stage type 'fitler' (did you mean 'filter'?)",
            "stages[1].wher: unknown field 'wher' (did you mean 'where'?)",
            "sinks[0].type: unknown sink type 'blackhol' (did you mean 'blackhole'?)",
        ],
    );
}

#[test]
fn durations_and_sizes_parse() {
    assert_errors(
        &format!(
            "name: d\nmode: job\n{SOURCE}sinks: [{{name: out, type: file, input: bids, config: {{path: /tmp/x, max_file_size: 10XB}}}}]\n"
        ),
        &["sinks[0].config.max_file_size: invalid size '10XB'"],
    );
    assert_errors(
        &format!(
            "name: d\nmode: job\n{SOURCE}sinks:\n  - {{name: a, type: file, input: bids, config: {{path: /tmp/x, rollover_interval: 10x}}}}\n  - {{name: b, type: file, input: bids, config: {{path: /tmp/y, rollover_interval: 10}}}}\n"
        ),
        &[
            "sinks[0].config.rollover_interval: invalid duration '10x': unknown unit 'x'",
            "sinks[1].config.rollover_interval: invalid duration '10': missing unit",
        ],
    );
}

#[test]
fn fan_in_schemas_must_match() {
    assert_errors(
        "name: f\nmode: job\nsources:\n  - {name: a, type: nexmark, config: {events: 10, table: bid}}\n  - {name: b, type: nexmark, config: {events: 10, table: person}}\nstages: [{name: u, type: union, input: [a, b]}]\nsinks: [{name: out, type: blackhole, input: u}]\n",
        &["stages[0].input[1]: schema of 'b' ("],
    );
}

#[test]
fn job_mode_needs_bounded_sources() {
    assert_errors(
        "name: j\nmode: job\nsources: [{name: a, type: nexmark}]\nsinks: [{name: out, type: blackhole, input: a}]\n",
        &["sources[0].config.events: required in job mode"],
    );
}

#[test]
fn dlq_must_name_a_sink() {
    assert_errors(
        "name: q\nmode: job\nsources: [{name: a, type: nexmark, dlq: bd, config: {events: 1}}]\nsinks: [{name: bad, type: blackhole}, {name: out, type: blackhole, input: a}]\n",
        &["sources[0].dlq: unknown sink 'bd' (did you mean 'bad'?)"],
    );
}

#[test]
fn file_formats_by_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    let txt = write(dir.path(), "flow.txt", "name: x");
    let out = run(&["validate", &txt]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unsupported file format: .txt"),
        "{}",
        stderr(&out)
    );

    let upper = write(
        dir.path(),
        "flow.YML",
        "name: x\nmode: job\nsources: [{name: a, type: nexmark, config: {events: 1}}]\nsinks: [{name: o, type: blackhole, input: a}]\n",
    );
    assert!(run(&["validate", &upper]).status.success());

    let json = write(
        dir.path(),
        "flow.json",
        r#"{"name": "x", "mode": "job", "sources": [{"name": "a", "type": "nexmark", "config": {"events": 1}}], "sinks": [{"name": "o", "type": "blackhole", "input": "a"}]}"#,
    );
    assert!(run(&["validate", &json]).status.success());
}

#[test]
fn syntax_errors_have_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = write(
        dir.path(),
        "bad.json",
        "{\n  \"name\": \"x\",\n  \"sources\": [\n}\n",
    );
    let err = stderr(&run(&["validate", &json]));
    assert!(err.contains("bad.json:4:1: syntax error"), "{err}");

    let yaml = write(
        dir.path(),
        "bad.yaml",
        "name: x\nsources:\n  - {name: a, type: nexmark\nsinks: []\n",
    );
    let err = stderr(&run(&["validate", &yaml]));
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(err.contains("syntax error"), "{err}");
}

#[test]
fn set_overrides_apply_before_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "f.yaml",
        "name: x\nmode: job\nsources: [{name: a, type: nexmark, config: {events: 1}}]\nsinks: [{name: o, type: blackhole, input: a}]\n",
    );
    let out = run(&["validate", &path, "--set", "sources.a.parallelism=0"]);
    assert!(
        stderr(&out).contains("sources[0].parallelism: must be at least 1 (got 0)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn window_settings_are_checked() {
    assert_errors(
        "name: w\nmode: job\nsources:\n  - {name: bids, type: nexmark, config: {events: 10, table: bid}, event_time: {column: date_tme}}\n  - {name: b2, type: nexmark, config: {events: 10, table: bid}}\nstages:\n  - {name: a, type: window, input: b2, window: {kind: hopping, size: 1s}, aggregates: {n: 'count(*)'}}\n  - {name: b, type: window, input: b2, window: {kind: sliding, size: 1s, slide: 2s}, aggregates: {n: 'count(*)'}}\n  - {name: c, type: window, input: b2, window: {kind: tumbling, size: 1s}, aggregates: {n: 'price + 1', m: 'maxx(price)'}}\nsinks: [{name: out, type: blackhole, input: a}]\n",
        &[
            "sources[0].event_time.column: column 'date_tme' not found (did you mean 'date_time'?)",
            "stages[0].window.kind: unknown value 'hopping' (expected one of: tumbling, sliding, session, count)",
            "stages[1].window.slide: must not exceed size",
            "stages[1].window: no event time: declare event_time on the source or set time_column",
            "stages[2].aggregates.n: `price + 1` is not an aggregate call",
            "stages[2].aggregates.m: unknown function 'maxx' (did you mean 'max'?)",
        ],
    );
    // Declaration errors (here a bad duration) are reported before schema checks run.
    assert_errors(
        "name: w\nmode: job\nsources: [{name: b, type: nexmark, config: {events: 10, table: bid}, event_time: {column: date_time, watermark: {max_out_of_orderness: 2 seconds}}}]\nsinks: [{name: out, type: blackhole, input: b}]\n",
        &["sources[0].event_time.watermark.max_out_of_orderness: invalid duration '2 seconds'"],
    );
}

#[test]
fn join_mistakes_are_reported_with_paths() {
    let sources = "sources:\n  - {name: p, type: nexmark, config: {events: 10, table: person}, event_time: {column: date_time}}\n  - {name: a, type: nexmark, config: {events: 10, table: auction}}\n";
    assert_errors(
        &format!(
            "name: j\n{sources}stages:\n  - {{name: j, type: join, input: [p, a], kind: window, on: \"l.id = r.name\", window: {{kind: tumbling, size: 10s}}}}\nsinks: [{{name: o, type: stdout, input: j}}]\n"
        ),
        &[
            "stages[0].on.right[0]: column 'name' not found",
            "stages[0].input: the right input has no event time",
            "stages[0].prefix: output column 'id' (from the right input) already exists",
        ],
    );
    assert_errors(
        &format!(
            "name: j\n{sources}stages:\n  - {{name: j, type: join, input: [p, a], kind: interval, on: \"l.id = r.item_name\", between: {{lower: 5s, upper: 1s}}, prefix: {{left: p_, right: a_}}}}\nsinks: [{{name: o, type: stdout, input: j}}]\n"
        ),
        &[
            "stages[0].on[0]: keys of different types",
            "stages[0].between: lower must not exceed upper",
        ],
    );
    assert_errors(
        &format!(
            "name: j\n{sources}stages:\n  - {{name: j, type: join, input: p, kind: window, on: \"id = seller\"}}\nsinks: [{{name: o, type: stdout, input: j}}]\n"
        ),
        &["stages[0].input: join takes exactly 2 inputs"],
    );
}
