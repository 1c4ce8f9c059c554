//! TLS for StreamFlow's network connectors: the `tls:` block of a
//! connector's config and the one rustls configuration built from it.
//!
//! Every client connection with TLS (MQTT, RabbitMQ, NATS, Redis,
//! PostgreSQL, MySQL, HTTP) verifies the server against the system's trust
//! store, or only against the authorities in `ca_file` when it is given;
//! `insecure_skip_verify` accepts any certificate (for tests against
//! self-signed servers, logged as a warning). A client certificate
//! (`cert_file` + `key_file`) gives mutual TLS. Cryptography is rustls on
//! *ring*: no C/C++ toolchain beyond what *ring* compiles itself.
//!
//! ```yaml
//! config: {url: "mqtts://broker:8883", topic: t, tls: {ca_file: /etc/ssl/broker-ca.pem}}
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;

/// A TLS setting that cannot be used, with the file or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or holds no PEM item.
    #[error("{key}: cannot read '{path}': {reason}")]
    File {
        /// The option naming the file (`ca_file`, `cert_file`, `key_file`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Options that do not go together.
    #[error("{0}")]
    Options(String),
    /// rustls refused the configuration (e.g. a key that does not match
    /// its certificate).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The `tls:` block of a connector's config. Present (even empty: `tls: {}`)
/// means "connect with TLS"; a `…s://` url scheme (`mqtts`, `amqps`,
/// `rediss`, `https`, `tls`) means the same with these defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of the certificate authorities to trust instead of the
    /// system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate and host name. For tests only: the
    /// connection is encrypted but not authenticated.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM client certificate (chain) for mutual TLS, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// The crypto provider every configuration is built on (*ring*).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes *ring* the process-wide default provider, for clients that build
/// their own rustls configuration from certificates (Redis, MySQL).
/// Idempotent.
pub fn install_default_provider() {
    // Err means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TlsOptions {
    /// Every problem of these options at once: `(option, message)` pairs
    /// for a pipeline's validation (files readable and holding PEM items,
    /// `cert_file` and `key_file` given together).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Err(e) = self.ca_certificates() {
            problems.push(("ca_file", e.to_string()));
        }
        if let Err(e) = self.client_identity() {
            let key = match &e {
                TlsError::File { key, .. } => key,
                _ => "cert_file",
            };
            problems.push((key, e.to_string()));
        }
        if self.insecure_skip_verify && self.ca_file.is_some() {
            problems.push((
                "insecure_skip_verify",
                "insecure_skip_verify and ca_file exclude each other: nothing would be checked against the ca_file".into(),
            ));
        }
        problems
    }

    /// The client configuration these options describe.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = if self.insecure_skip_verify {
            tracing::warn!(
                "tls: insecure_skip_verify is set: the server's certificate is not checked"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                    provider().signature_verification_algorithms,
                )))
        } else {
            builder.with_root_certificates(self.root_store()?)
        };
        Ok(match self.client_identity()? {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        })
    }

    /// The authorities of `ca_file` in PEM, for clients that take the
    /// file's text rather than a configuration (Redis, RabbitMQ).
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, TlsError> {
        self.ca_file
            .as_deref()
            .map(|path| {
                self.ca_certificates()?;
                std::fs::read(path).map_err(|e| file_error("ca_file", path, e.to_string()))
            })
            .transpose()
    }

    /// The trust store: `ca_file`'s authorities, or the system's.
    fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        match self.ca_certificates()? {
            Some(certificates) => {
                for certificate in certificates {
                    roots.add(certificate).map_err(|e| {
                        file_error(
                            "ca_file",
                            self.ca_file.as_deref().unwrap_or(Path::new("")),
                            e.to_string(),
                        )
                    })?;
                }
            }
            None => return Ok(system_roots().clone()),
        }
        Ok(roots)
    }

    fn ca_certificates(&self) -> Result<Option<Vec<CertificateDer<'static>>>, TlsError> {
        self.ca_file
            .as_deref()
            .map(|path| certificates("ca_file", path))
            .transpose()
    }

    fn client_identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some((
                certificates("cert_file", cert)?,
                private_key("key_file", key)?,
            ))),
            _ => Err(TlsError::Options(
                "cert_file and key_file go together (a client certificate and its key)".into(),
            )),
        }
    }
}

/// The system's trust store, read once per process.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!("tls: system trust store: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!("tls: the system trust store holds no certificate authority; servers can only be verified against a tls.ca_file");
        }
        tracing::debug!(added, ignored, "tls: system trust store loaded");
        roots
    })
}

/// An HTTP client builder whose `https` connections use `tls`, or the
/// defaults (the system's trust store) when `None`.
///
/// # Errors
/// Unusable options, or options given to a build without https.
pub fn http_client(tls: Option<&TlsOptions>) -> Result<reqwest::ClientBuilder, TlsError> {
    let builder = reqwest::Client::builder();
    #[cfg(feature = "https")]
    {
        let config = tls.cloned().unwrap_or_default().client_config()?;
        Ok(builder.tls_backend_preconfigured(config))
    }
    #[cfg(not(feature = "https"))]
    match tls {
        Some(_) => Err(TlsError::Options(
            "this build of streamflow has no TLS (cargo feature `tls`)".into(),
        )),
        None => Ok(builder),
    }
}

/// The `tls:` block of a listening connector (the webhook source): the
/// certificate it presents.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsOptions {
    /// PEM certificate chain, the server's own first.
    pub cert_file: PathBuf,
    /// PEM private key of the certificate.
    pub key_file: PathBuf,
}

impl ServerTlsOptions {
    /// The server configuration; also the validation of the files (the
    /// key must match the certificate).
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let chain = certificates("cert_file", &self.cert_file)?;
        let key = private_key("key_file", &self.key_file)?;
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?)
    }
}

fn file_error(key: &'static str, path: &Path, reason: String) -> TlsError {
    TlsError::File {
        key,
        path: path.to_path_buf(),
        reason,
    }
}

/// The certificates of a PEM file; an error when it holds none.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e.to_string()))?;
    if certificates.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in it".into()));
    }
    Ok(certificates)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(key, path, e.to_string()))
}

/// `insecure_skip_verify`: any certificate and name is accepted; the
/// handshake signatures are still checked, so the session keys are the
/// server's.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(yaml_like: &str) -> TlsOptions {
        serde_json::from_str(yaml_like).expect("options parse")
    }

    #[test]
    fn missing_files_are_reported_with_their_option() {
        let o = options(r#"{"ca_file": "/nonexistent/ca.pem", "cert_file": "/nonexistent/c.pem"}"#);
        let problems = o.problems();
        assert!(
            problems
                .iter()
                .any(|(k, m)| *k == "ca_file" && m.contains("/nonexistent/ca.pem")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|(k, m)| *k == "cert_file" && m.contains("go together")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_file_without_pem_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let o = TlsOptions {
            ca_file: Some(path),
            ..TlsOptions::default()
        };
        let message = o.client_config().expect_err("no certificate").to_string();
        assert!(message.contains("no PEM certificate"), "{message}");
    }

    #[test]
    fn insecure_needs_no_trust_store() {
        let o = TlsOptions {
            insecure_skip_verify: true,
            ..TlsOptions::default()
        };
        assert!(o.problems().is_empty());
        o.client_config().expect("insecure config builds");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = serde_json::from_str::<TlsOptions>(r#"{"ca": "x"}"#).expect_err("unknown key");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
