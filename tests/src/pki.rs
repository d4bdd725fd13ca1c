//! A throw-away certificate authority for one test control plane or one gRPC
//! channel: a CA, server and client certificates, and a service-account key.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertifiedKey {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`, returning both paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), Error> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        fs::write(&cert, &self.cert_pem).map_err(|e| Error::io(&cert, e))?;
        fs::write(&key, &self.key_pem).map_err(|e| Error::io(&key, e))?;
        Ok((cert, key))
    }
}

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate for the given DNS names and IP addresses.
    pub fn server_cert(&self, names: &[&str]) -> Result<CertifiedKey, Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate; Kubernetes reads the user from the CN and the
    /// groups from the O entries.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Result<CertifiedKey, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<CertifiedKey, Error> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A fresh ECDSA key for signing service-account tokens, as (private, public) PEM.
pub fn service_account_key() -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// `token` (a JWS) with its header and claims kept and its signature made
/// by a fresh P-256 key: what someone holding no key of the cluster's issuer
/// can send, indistinguishable from the real token but for the signature.
pub fn forge(token: &str) -> Result<String, Error> {
    use base64::Engine as _;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING as ES256, EcdsaKeyPair};
    let setup = |what: &str| Error::Setup(format!("forging a token: {what}"));
    let (signed, _) = token.rsplit_once('.').ok_or_else(|| setup("not a JWS"))?;
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ES256, &rng).map_err(|_| setup("key"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ES256, pkcs8.as_ref(), &rng).map_err(|_| setup("key"))?;
    let signature = key
        .sign(&rng, signed.as_bytes())
        .map_err(|_| setup("sign"))?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref());
    Ok(format!("{signed}.{signature}"))
}

/// A CA file plus a server certificate and key for `localhost` and
/// 127.0.0.1, written to a temporary directory (removed on drop).
pub struct TlsFiles {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn generate() -> Result<Self, Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
        let ca = TestCa::new("kata-coordinator-ca")?;
        let ca_file = dir.path().join("ca.crt");
        fs::write(&ca_file, ca.cert_pem()).map_err(|e| Error::io(&ca_file, e))?;
        let (cert, key) = ca
            .server_cert(&["localhost", "127.0.0.1"])?
            .write(dir.path(), "tls")?;
        Ok(TlsFiles {
            _dir: dir,
            ca: ca_file,
            cert,
            key,
        })
    }
}
