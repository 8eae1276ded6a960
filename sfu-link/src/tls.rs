//! TLS for node links. Control has one certificate, self-signed by default: nodes are given
//! that certificate (a PEM file) and accept exactly it — pinning, so no CA is involved and no
//! host name has to match. TLS 1.3 only, ALPN [`ALPN`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Application protocol of a node link.
pub const ALPN: &[u8] = b"sfu-node/1";

/// Application protocol of a relay link between two media nodes.
pub const RELAY_ALPN: &[u8] = b"sfu-relay/1";

/// The name a node uses when it connects. The certificate is pinned, so the name is not
/// checked; it only has to be a valid DNS name.
pub const SERVER_NAME: &str = "sfu-control";

/// A link idle this long is dead (keep-alives go every [`KEEP_ALIVE`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC keep-alive interval on links.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Why TLS material could not be made, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a PEM {what}: {reason}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// Control's certificate and private key.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Identity {
    /// A fresh self-signed certificate for `names` (DNS names or IP addresses).
    pub fn generate(names: Vec<String>) -> Result<Identity, TlsError> {
        let certified = rcgen::generate_simple_self_signed(names)?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        Ok(Identity {
            cert: certified.cert.der().clone(),
            key,
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// Read a certificate and its key from PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
        let cert = read_certificate(cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Pem {
            path: key_path.to_path_buf(),
            what: "private key",
            reason: e.to_string(),
        })?;
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| TlsError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(Identity {
            cert,
            key,
            cert_pem: read(cert_path)?,
            key_pem: read(key_path)?,
        })
    }

    /// Load the pair if both files exist; otherwise generate one and write both (the key
    /// readable by its owner only). Returns whether it was generated.
    pub fn load_or_generate(
        cert_path: &Path,
        key_path: &Path,
        names: Vec<String>,
    ) -> Result<(Identity, bool), TlsError> {
        if cert_path.exists() && key_path.exists() {
            return Ok((Identity::load(cert_path, key_path)?, false));
        }
        let identity = Identity::generate(names)?;
        identity.save(cert_path, key_path)?;
        Ok((identity, true))
    }

    /// Write the certificate and the key as PEM.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        write_private(key_path, &self.key_pem).map_err(io(key_path))?;
        fs::write(cert_path, &self.cert_pem).map_err(io(cert_path))
    }

    /// The certificate as PEM (what nodes are given).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// Read one certificate from a PEM file (the first one in it).
pub fn read_certificate(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: "certificate",
        reason: e.to_string(),
    })
}

/// QUIC server configuration for control's side of node links.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    server_config_for(identity, ALPN)
}

/// QUIC server configuration speaking application protocol `alpn`.
pub fn server_config_for(
    identity: &Identity,
    alpn: &[u8],
) -> Result<quinn::ServerConfig, TlsError> {
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// QUIC client configuration for a node: accept only `pinned`.
pub fn client_config(pinned: CertificateDer<'static>) -> Result<quinn::ClientConfig, TlsError> {
    client_config_for(pinned, ALPN)
}

/// QUIC client configuration speaking `alpn` that accepts only `pinned`.
pub fn client_config_for(
    pinned: CertificateDer<'static>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Pinned {
        cert: pinned,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// As [`client_config_for`], the pinned certificate given as DER bytes.
pub fn pinned_client_config(cert_der: &[u8], alpn: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
    client_config_for(CertificateDer::from(cert_der.to_vec()), alpn)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).unwrap_or_else(|_| unreachable!("10 s fits")),
    ));
    Arc::new(transport)
}

/// Accepts exactly one certificate, and checks that the peer holds its key.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Create (or truncate) `path` readable by its owner only, and write `contents`.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_saves_and_loads_back_the_same() {
        let dir = std::env::temp_dir().join(format!("sfu-link-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let (made, generated) =
            Identity::load_or_generate(&cert, &key, vec!["localhost".into()]).expect("generate");
        assert!(generated);
        let (loaded, generated) =
            Identity::load_or_generate(&cert, &key, vec!["localhost".into()]).expect("load");
        assert!(!generated);
        assert_eq!(made.cert, loaded.cert);
        assert_eq!(read_certificate(&cert).expect("cert"), made.cert);
        let mode = fs::metadata(&key).expect("key").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0);
        server_config(&loaded).expect("server config");
        client_config(loaded.cert.clone()).expect("client config");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn garbage_files_are_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("sfu-link-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.pem");
        fs::write(&path, "not a certificate").expect("write");
        let err = read_certificate(&path).expect_err("garbage");
        assert!(err.to_string().contains("bad.pem"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }
}
