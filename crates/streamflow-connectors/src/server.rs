//! Connecting to an external server, with retries and backoff, and
//! talking to it while a flow is planned.

use std::future::Future;
use std::time::Duration;

use streamflow_core::{Diagnostics, Error, Result};
use streamflow_tls::TlsOptions;

/// Attempts before giving up: about 10 s in all with the waits between.
const ATTEMPTS: u32 = 6;
/// Bound on one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls `connect` until it succeeds, each attempt bounded by 5 s, waiting
/// 0.1 s, 0.2 s, 0.4 s … (at most 2 s) between attempts, each failure
/// logged; the last becomes `cannot connect to <system> at <address>: why`
/// (the error with its causes: a TLS failure says which).
pub(crate) async fn connect_with_backoff<T, E, F>(
    system: &str,
    address: &str,
    mut connect: impl FnMut() -> F,
) -> Result<T>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: Future<Output = std::result::Result<T, E>>,
{
    let mut wait = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let why = match tokio::time::timeout(ATTEMPT_TIMEOUT, connect()).await {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(e)) => streamflow_core::error::describe(&*e.into()),
            Err(_) => "timed out".to_string(),
        };
        if attempt >= ATTEMPTS {
            return Err(Error::Other(format!(
                "cannot connect to {system} at {address}: {why}"
            )));
        }
        tracing::warn!(system, address, attempt, error = %why, "unreachable, retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        attempt += 1;
    }
}

/// Runs `work` to completion on a thread with a runtime of its own, so that
/// planning (which may happen inside a runtime, or outside any) can ask a
/// server something: a query's description, a sample of messages.
///
/// # Errors
/// What `work` returns, or that the thread failed.
pub(crate) fn at_plan_time<T, F, Fut>(work: F) -> std::result::Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(work())
    })
    .join()
    .map_err(|_| "the planning thread failed".to_string())?
}

/// The TLS of one connection: the `tls:` options, or their defaults when
/// the url's scheme asks for TLS (`mqtts://`, `amqps://`, `https://` …);
/// `None` for a plain connection.
pub(crate) fn tls(options: Option<&TlsOptions>, scheme_wants_tls: bool) -> Option<TlsOptions> {
    match options {
        Some(o) => Some(o.clone()),
        None if scheme_wants_tls => Some(TlsOptions::default()),
        None => None,
    }
}

/// Checks a connection's `tls:` options for validation, each problem at
/// `<config>.tls.<option>`; TLS in a build without the `tls` feature is
/// one.
pub(crate) fn check_tls(
    at: impl Fn(&str) -> String,
    tls: Option<&TlsOptions>,
) -> std::result::Result<(), Diagnostics> {
    let Some(tls) = tls else {
        return Ok(());
    };
    let mut problems = Diagnostics::new();
    if !cfg!(feature = "tls") {
        problems.push(
            at("tls"),
            "this build of streamflow has no TLS (cargo feature `tls`)",
        );
    }
    for (key, message) in tls.problems() {
        problems.push(at(&format!("tls.{key}")), message);
    }
    problems.into_result(())
}

/// The rustls client configuration of `tls`, as a pipeline error.
#[cfg(feature = "tls")]
pub(crate) fn tls_client_config(tls: &TlsOptions) -> Result<rustls::ClientConfig> {
    tls.client_config().map_err(|e| Error::Other(e.to_string()))
}
