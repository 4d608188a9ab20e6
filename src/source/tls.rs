//! TLS for both connections: a rustls client configuration per `sslmode` (ring provider, no
//! process-wide state), with the client certificate when `sslcert`/`sslkey` are set, and the
//! `tls-server-end-point` channel-binding hash of the server's certificate for
//! SCRAM-SHA-256-PLUS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;

use super::conninfo::{ConnInfo, SslMode};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read root certificates from {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("no root certificates found (set sslrootcert in the URL)")]
    NoRoots,
    #[error(
        "sslmode={0} verifies the server against a CA's certificate, and none is given: set \
         sslrootcert=<the CA's certificate file> in the URL (or put it in ~/.postgresql/root.crt); \
         sslrootcert=system trusts the system's CAs, with sslmode=verify-full only"
    )]
    NoRootCert(&'static str),
    #[error("cannot use the client certificate (sslcert {cert}, sslkey {key}): {reason}")]
    ClientCert {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS client configuration, and whether it verifies the server's certificate.
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub verifies: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a failed TLS handshake failed because the peer's certificate did not verify
/// (which trying again cannot fix), as opposed to the connection failing.
pub fn certificate_refused(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_))
    )
}

/// The mode in effect: as in libpq, with a root certificate at hand (sslrootcert, or
/// ~/.postgresql/root.crt), sslmode=require verifies the chain like verify-ca.
pub fn effective_mode(info: &ConnInfo) -> SslMode {
    match info.sslmode {
        SslMode::Require if has_root_cert(info) => SslMode::VerifyCa,
        other => other,
    }
}

/// The rustls configuration for the URL's TLS settings; `None` for `sslmode=disable`.
pub fn client_config(info: &ConnInfo) -> Result<Option<TlsSetup>, TlsSetupError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mode = effective_mode(info);
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => Arc::new(NoCertificateCheck(provider())),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(load_roots(mode, info.sslrootcert.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_string())))?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&info.sslcert, &info.sslkey) {
        (Some(cert), Some(key)) => {
            let (chain, key_der) = load_client_cert(cert, key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| client_cert_error(cert, key, e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(TlsSetup {
        config: Arc::new(config),
        verifies: mode.verifies_certificate(),
    }))
}

fn client_cert_error(cert: &Path, key: &Path, reason: String) -> TlsSetupError {
    TlsSetupError::ClientCert {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason,
    }
}

/// The client certificate chain (PEM) and its private key (PEM: PKCS#8, PKCS#1 or SEC1). An
/// error names the files, never their content.
fn load_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let err = |reason: String| client_cert_error(cert, key, reason);
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{} is not PEM certificates: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(err(format!("{} holds no certificate", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        err(format!(
            "{} holds no usable private key (PEM: PKCS#8, PKCS#1 or SEC1): {e}",
            key.display()
        ))
    })?;
    Ok((chain, key_der))
}

/// libpq's default root certificate file, if present.
fn default_root_cert() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".postgresql/root.crt"))
        .filter(|p| p.exists())
}

/// Whether the URL names the CA that verifies the server (`sslrootcert`, or libpq's default
/// `~/.postgresql/root.crt`): without one, `verify-ca` and `verify-full` cannot be used.
pub fn has_root_cert(info: &ConnInfo) -> bool {
    info.sslrootcert.is_some() || default_root_cert().is_some()
}

/// Roots from `sslrootcert`, else libpq's default `~/.postgresql/root.crt`; `sslrootcert=system`
/// is the system store. As in libpq, nothing is not the system store: with verify-ca (which
/// does not check the host name) any certificate a public CA signed would pass.
fn load_roots(mode: SslMode, root_cert: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    let system = root_cert.is_some_and(|p| p.as_os_str() == "system");
    let path = match root_cert {
        Some(p) if !system => Some(p.to_path_buf()),
        Some(_) => None,
        None => Some(default_root_cert().ok_or(TlsSetupError::NoRootCert(mode.name()))?),
    };
    match path {
        Some(path) => {
            let err = |reason: String| TlsSetupError::RootCert {
                path: path.display().to_string(),
                reason,
            };
            for cert in CertificateDer::pem_file_iter(&path).map_err(|e| err(e.to_string()))? {
                store
                    .add(cert.map_err(|e| err(e.to_string()))?)
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
    }
    if store.is_empty() {
        return Err(TlsSetupError::NoRoots);
    }
    Ok(store)
}

/// `sslmode=prefer|require`: encrypt, but accept any certificate (libpq's behaviour). The
/// handshake signature is still checked, so the channel binding hash stays meaningful.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must verify; the host name need not match.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929 §4.1): the server certificate
/// hashed with its signature's hash function, SHA-256 for MD5 and SHA-1. `None` when the
/// certificate cannot be parsed or its signature algorithm names no hash (e.g. Ed25519).
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let oid = cert.signature_algorithm.oid.to_string();
    let hash = match oid.as_str() {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, ecdsa-with-SHA1, ecdsa-with-SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => sha2::Sha256::digest(cert_der).to_vec(),
        // sha384WithRSA, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => sha2::Sha384::digest(cert_der).to_vec(),
        // sha512WithRSA, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => sha2::Sha512::digest(cert_der).to_vec(),
        _ => return None,
    };
    Some(hash)
}
