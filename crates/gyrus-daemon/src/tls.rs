//! Optional TLS on the daemon's address (`gyrus daemon --tls-cert --tls-key`), for reaching a
//! daemon from another machine without an SSH tunnel: the control API's token and the APIs'
//! traffic are then encrypted. rustls with the ring provider; certificates and key in PEM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::DaemonError;

/// The certificate chain and private key files of `--tls-cert` / `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS acceptor for the certificate and key in `files`; every problem names the file.
pub fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, DaemonError> {
    let bad = |path: &Path, what: String| {
        DaemonError::BadRequest(format!("TLS: {}: {what}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad(&files.cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad(&files.key, format!("no PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DaemonError::Internal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.key, format!("does not go with the certificate: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let files = TlsFiles { cert, key };
        let err = acceptor(&files).err().expect("refused").to_string();
        assert!(err.contains("cert.pem"), "{err}");
        let files = TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: files.key,
        };
        let err = acceptor(&files).err().expect("refused").to_string();
        assert!(
            err.contains("missing.pem") && err.contains("cannot read"),
            "{err}"
        );
    }
}
