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

/// The files a node loads: the CA certificate, its certificate and its key.
const NODE_FILES: [&str; 3] = ["ca.pem", "node.pem", "node.key"];
/// Every file [`generate_dev_certs`] writes; `ca.key` is only needed to sign more nodes.
const DEV_FILES: [&str; 4] = ["ca.pem", "ca.key", "node.pem", "node.key"];

/// Writes a throwaway cluster CA and one node certificate into `dir` (`ca.pem`, `ca.key`,
/// `node.pem`, `node.key`), keys readable by their owner only from the moment they exist.
/// Used by `switchboard dev` and `switchboard certs`.
///
/// Does nothing when the files a node loads are there (`ca.key` may have been put away).
/// Refuses when only some of them are: a new CA over part of an old one would silently stop
/// every node that holds the old one from trusting this one.
pub fn generate_dev_certs(dir: &Path) -> anyhow::Result<()> {
    // A dangling symlink counts as present: nothing is written through one.
    let present = |name: &str| std::fs::symlink_metadata(dir.join(name)).is_ok();
    if NODE_FILES.iter().all(|f| present(f)) {
        return Ok(());
    }
    let (found, missing): (Vec<&str>, Vec<&str>) = DEV_FILES.iter().partition(|f| present(f));
    if !found.is_empty() {
        return Err(anyhow!(
            "mesh TLS directory {} has {} but not {}: refusing to make a new cluster CA over \
             part of an old one (nodes that hold the old CA would stop trusting this one); \
             restore the missing files, or remove the others to start a new CA",
            dir.display(),
            found.join(", "),
            missing.join(", ")
        ));
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

    let files = [
        ("ca.key", ca_key.serialize_pem(), 0o600),
        ("ca.pem", ca_cert.pem(), 0o644),
        ("node.key", node_key.serialize_pem(), 0o600),
        ("node.pem", node_cert.pem(), 0o644),
    ];
    for (n, (name, contents, mode)) in files.iter().enumerate() {
        if let Err(e) = write_new(&dir.join(name), contents.as_bytes(), *mode) {
            // Leave nothing half made: a later start would refuse the partial set.
            for (written, _, _) in &files[..n] {
                let _ = std::fs::remove_file(dir.join(written));
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Creates `path` with `mode` (on Unix; before any byte is written, whatever the umask allows
/// more) and writes `contents`. Fails if anything, a symlink included, is at `path` already.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("failed to write {}", path.display()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dir: &Path) -> Vec<Vec<u8>> {
        DEV_FILES
            .iter()
            .map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect()
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_created_owner_only_and_public_files_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        generate_dev_certs(&tls).unwrap();
        for (name, want) in [
            ("ca.key", 0o600),
            ("node.key", 0o600),
            ("ca.pem", 0o644),
            ("node.pem", 0o644),
        ] {
            let mode = std::fs::metadata(tls.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            // The umask may only take bits away.
            assert_eq!(mode & !want, 0, "{name}: {mode:o}");
            if name.ends_with(".key") {
                assert_eq!(mode, 0o600, "{name}: {mode:o}");
            }
        }
        assert!(MeshTls::dev(&tls).is_ok());
    }

    /// A key is never written into something already at its path: the old code wrote it into
    /// an existing file (readable by others until the chmod) or through a symlink.
    #[cfg(unix)]
    #[test]
    fn a_key_is_not_written_into_an_existing_file_or_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("planted");
        std::fs::write(&planted, "").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(write_new(&planted, b"secret", 0o600).is_err());
        assert_eq!(std::fs::read(&planted).unwrap(), b"");

        let target = dir.path().join("elsewhere");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_new(&link, b"secret", 0o600).is_err());
        assert!(!target.exists(), "the key went through the symlink");

        // generate_dev_certs sees a dangling symlink as a file that is there.
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).unwrap();
        std::os::unix::fs::symlink(&target, tls.join("ca.key")).unwrap();
        let err = generate_dev_certs(&tls).unwrap_err().to_string();
        assert!(err.contains("ca.key") && err.contains("node.key"), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn a_partial_set_is_refused_naming_what_is_missing_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        generate_dev_certs(&tls).unwrap();
        let before = read_all(&tls);
        // Complete: nothing happens, again and again.
        generate_dev_certs(&tls).unwrap();
        assert_eq!(read_all(&tls), before);

        // The CA key put away: a node still has all it loads.
        let ca_key = std::fs::read(tls.join("ca.key")).unwrap();
        std::fs::remove_file(tls.join("ca.key")).unwrap();
        generate_dev_certs(&tls).unwrap();
        assert!(!tls.join("ca.key").exists());
        std::fs::write(tls.join("ca.key"), &ca_key).unwrap();

        for lost in [
            &["node.key"][..],
            &["node.pem", "node.key"][..],
            &["ca.pem"][..],
        ] {
            let saved: Vec<Vec<u8>> = lost
                .iter()
                .map(|f| std::fs::read(tls.join(f)).unwrap())
                .collect();
            for f in lost {
                std::fs::remove_file(tls.join(f)).unwrap();
            }
            let err = generate_dev_certs(&tls).unwrap_err().to_string();
            for f in lost {
                assert!(err.contains(f), "{lost:?}: {err}");
            }
            assert!(err.contains("refusing"), "{err}");
            // Nothing was replaced or added.
            for f in DEV_FILES.iter().filter(|f| !lost.contains(f)) {
                let i = DEV_FILES.iter().position(|d| d == f).unwrap();
                assert_eq!(std::fs::read(tls.join(f)).unwrap(), before[i], "{f}");
            }
            for f in lost.iter() {
                assert!(!tls.join(f).exists(), "{f} was made again");
            }
            for (f, bytes) in lost.iter().zip(saved) {
                std::fs::write(tls.join(f), bytes).unwrap();
            }
        }
        assert_eq!(read_all(&tls), before);
    }
}
