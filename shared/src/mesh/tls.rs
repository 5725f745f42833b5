//! TLS material of the mesh: a cluster CA, node certificates signed by it, and the quinn
//! client and server configurations that require them both ways (mutual TLS).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::protocol::mesh::ALPN;

/// Name every node certificate carries and every client checks.
pub const MESH_SERVER_NAME: &str = "switchboard-mesh";

/// Installs the ring crypto provider for rustls once per process. Both quinn and rustls use
/// it; calling this more than once is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Writes a throwaway cluster CA and one node certificate into `dir` (`ca.pem`, `ca.key`,
/// `node.pem`, `node.key`) unless they exist. Used by `switchboard dev` and `switchboard certs`.
pub fn generate_dev_certs(dir: &Path) -> anyhow::Result<()> {
    let node_pem = dir.join("node.pem");
    if node_pem.exists() && dir.join("ca.pem").exists() && dir.join("node.key").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchboard cluster CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);

    let mut node_params =
        rcgen::CertificateParams::new(vec![MESH_SERVER_NAME.to_string(), "localhost".to_string()])?;
    node_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchboard node");
    node_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
    node_params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_key = rcgen::KeyPair::generate()?;
    let node_cert = node_params.signed_by(&node_key, &issuer)?;

    write_private(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    write_private(&dir.join("node.key"), &node_key.serialize_pem())?;
    std::fs::write(&node_pem, node_cert.pem())?;
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents)
        .with_context(|| format!("failed to write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Loaded certificates and keys, ready to build quinn configurations.
#[derive(Debug)]
pub struct MeshTls {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Congestion window a new connection starts with; `None`: quinn's (14,720 bytes).
    initial_window: Option<u64>,
}

impl Clone for MeshTls {
    fn clone(&self) -> Self {
        MeshTls {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            initial_window: self.initial_window,
        }
    }
}

impl MeshTls {
    /// The throwaway material in `dir` (`ca.pem`, `node.pem`, `node.key`), made first by
    /// [`generate_dev_certs`] if it is not there: for `switchboard dev`, tests and benchmarks.
    pub fn dev(dir: &Path) -> anyhow::Result<MeshTls> {
        generate_dev_certs(dir)?;
        MeshTls::load(
            &dir.join("ca.pem"),
            &dir.join("node.pem"),
            &dir.join("node.key"),
        )
    }

    pub fn load(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<MeshTls> {
        let read = |p: &Path| {
            std::fs::read(p).with_context(|| format!("failed to read TLS file {}", p.display()))
        };
        let ca = rustls_pemfile::certs(&mut &read(ca)?[..])
            .collect::<Result<Vec<_>, _>>()
            .context("failed to parse CA certificate")?;
        let chain = rustls_pemfile::certs(&mut &read(cert)?[..])
            .collect::<Result<Vec<_>, _>>()
            .context("failed to parse node certificate")?;
        let key = rustls_pemfile::private_key(&mut &read(key)?[..])
            .context("failed to parse node key")?
            .ok_or_else(|| anyhow!("no private key in {}", key.display()))?;
        if ca.is_empty() || chain.is_empty() {
            return Err(anyhow!("TLS files hold no certificate"));
        }
        Ok(MeshTls {
            ca,
            chain,
            key,
            initial_window: None,
        })
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).context("bad CA certificate")?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side: presents the node certificate and requires a client certificate signed
    /// by the cluster CA.
    pub fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        install_crypto_provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder(self.roots()?)
            .build()
            .context("failed to build client verifier")?;
        let mut tls = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("bad node certificate or key")?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .context("QUIC server TLS config")?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(self.initial_window)));
        Ok(config)
    }

    /// Client side: verifies the server against the cluster CA and presents the node
    /// certificate.
    pub fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        install_crypto_provider();
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .context("bad node certificate or key")?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .context("QUIC client TLS config")?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(self.initial_window)));
        Ok(config)
    }

    /// Connections made or accepted with these configurations start with a congestion
    /// window of `bytes` (`mesh.initial_window_bytes`; 0 keeps quinn's). Inside a data
    /// centre, where the mesh runs, a window sized for the internet holds back a burst of
    /// requests for a round trip.
    pub fn with_initial_window(mut self, bytes: u64) -> MeshTls {
        self.initial_window = (bytes > 0).then_some(bytes);
        self
    }
}

fn transport_config(initial_window: Option<u64>) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(500)));
    t.max_idle_timeout(Some(
        std::time::Duration::from_secs(3)
            .try_into()
            .expect("idle timeout fits"),
    ));
    t.max_concurrent_bidi_streams(4096u32.into());
    t.stream_receive_window((16u32 * 1024 * 1024).into());
    t.receive_window((64u32 * 1024 * 1024).into());
    t.send_window(64 * 1024 * 1024);
    if let Some(bytes) = initial_window {
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window(bytes);
        t.congestion_controller_factory(Arc::new(cubic));
    }
    t
}
