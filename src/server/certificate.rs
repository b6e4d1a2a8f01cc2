//! The listener's TLS certificate (`[tls]`, PRODUCT.md 14): read and checked at start, read
//! again on SIGHUP; `server::tls` serves connections with whichever is in force.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::sync::{Arc, RwLock};

/// The listener's certificate and settings, replaced on SIGHUP.
pub struct Tls {
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the certificate and key; an error names the field and what is wrong.
    pub fn load(tls: &TlsConfig) -> Result<Tls, String> {
        Ok(Tls {
            config: RwLock::new(server_config(tls)?),
        })
    }

    /// Puts `config` (from [`server_config`]) in force: new connections get its certificate,
    /// open ones keep theirs.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// TLS 1.2 and 1.3 with the certificate chain and key of `tls`, ALPN `http/1.1`.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let read_error = |field: &str, path: &str, e: &dyn std::fmt::Display| {
        format!("tls.{field}: cannot read a PEM {field} from {path}: {e}")
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read_error("cert_file", &tls.cert_file, &e))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file: {} holds no CERTIFICATE block",
            tls.cert_file
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| read_error("key_file", &tls.key_file, &e))?;
    // ring, which the webhook client links already (aws-lc-rs, rustls' other provider, would
    // add a C build); it has no post-quantum key exchange, hence rustls' deprecation.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls.key_file: the key in {} does not go with the certificate in {}: {e}",
                tls.key_file, tls.cert_file
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
