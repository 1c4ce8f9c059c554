//! The Rust examples in `examples/` really run.

#[path = "../../../examples/builder.rs"]
mod builder_example;

#[test]
fn builder_example_runs() {
    builder_example::main().expect("the builder example runs");
}

#[path = "../../../examples/resilience.rs"]
mod resilience_example;

#[test]
fn resilience_example_runs() {
    resilience_example::main().expect("the resilience example runs");
}
