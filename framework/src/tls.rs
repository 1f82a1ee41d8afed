//! TLS client settings shared by the transports and the HTTP client: the system's CA store plus
//! an optional PEM file of a private CA, rustls with the ring provider.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// Makes ring the process's default rustls provider, for the libraries that take the default
/// (the Kubernetes and NATS clients): a build that links a second provider (matrix-sdk brings
/// aws-lc-rs) has no default of its own, and such a client would fail its first handshake.
/// Call it once at start; a default set before is kept.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS client configuration: trust the system's CA certificates and those in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> io::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A certificate the store cannot parse is skipped; the others still count.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| io::Error::other(format!("CA file {}: {e}", path.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| io::Error::other(format!("CA file {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| io::Error::other(format!("CA file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(io::Error::other(
            "no trusted CA certificates: install ca-certificates or set ca_file",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
