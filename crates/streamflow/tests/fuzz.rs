//! Bounded fuzzing of the flow-file parser and validator: mutated example
//! flows and arbitrary text are parsed and validated without a panic, and
//! every rejection carries a message.

use std::path::Path;

use proptest::prelude::*;
use streamflow_dsl::{FileFormat, parse_str};

/// The example flows, as seeds for mutation.
fn seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut out = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("examples").flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml") {
                out.push(std::fs::read_to_string(&p).expect("read example"));
            }
        }
    }
    out.sort();
    out
}

/// Parses and validates; a failure must explain itself.
fn check(text: &str) {
    match parse_str(text, FileFormat::Yaml) {
        Ok(spec) => {
            if let Err(d) = streamflow_runtime::validate_spec(&spec) {
                assert!(d.iter().all(|e| !e.to_string().trim().is_empty()));
            }
        }
        Err(d) => assert!(!d.is_empty()),
    }
}

/// Edits to a flow file: delete, duplicate or replace a span, or insert
/// YAML punctuation and keywords.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("\n".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("type: retry".to_string()),
        Just("input: nowhere".to_string()),
        Just("yes".to_string()),
        Just("-1".to_string()),
        Just("'".to_string()),
        "[a-z_ ]{1,6}",
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Duplicate(a, n)),
        (any::<usize>(), token).prop_map(|(a, t)| Edit::Insert(a, t)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        let len = bytes.len().max(1);
        match e {
            Edit::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            Edit::Duplicate(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                let span = bytes[at.min(end)..end].to_vec();
                bytes.splice(end..end, span);
            }
            Edit::Insert(at, t) => {
                let at = (at % len).min(bytes.len());
                bytes.splice(at..at, t.bytes());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_example_flows_never_panic(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let seeds = seeds();
        let text = apply(&seeds[seed.index(seeds.len())], &edits);
        check(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(&text);
    }
}
