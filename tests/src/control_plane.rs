//! A real local Kubernetes control plane: etcd and kube-apiserver, built from
//! the Go module proxy at pinned versions (see `tests/scripts/build-control-plane.sh`)
//! and started on free loopback ports with generated certificates.
//!
//! We start the binaries ourselves rather than through the `envtest` crate:
//! envtest drives Go's setup-envtest, which downloads prebuilt binaries at run
//! time, and it gives no handle on the flags we need (a service-account
//! signing key for TokenRequest/TokenReview, RBAC authorization, process
//! lifetime tied to the test binary).
//!
//! Each [`ControlPlane`] owns its processes and data directory: dropping it
//! (also while unwinding from a panic) stops the API server, then etcd, then
//! removes the directory. A killed test binary takes them along too, see
//! [`crate::child_process`].

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::Error;
use crate::child_process::{spawn_tied_to_process, stop};
use crate::pki::{TestCa, service_account_key};

/// The audience-independent issuer of the service-account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const FIELD_MANAGER: &str = "kata-tests";

/// Where the etcd and kube-apiserver binaries are: `KATA_CONTROL_PLANE_BIN_DIR`
/// when set (the Makefile sets it), otherwise whatever the build script prints
/// (it builds on the first run and answers from its cache after that).
pub fn binary_dir() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KATA_CONTROL_PLANE_BIN_DIR") {
            return Ok(PathBuf::from(dir));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-control-plane.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed (its message is above)",
                script.display()
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .last()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} printed no directory", script.display()))
    })
    .clone()
    .map_err(Error::Setup)
}

const PORT_RACE_ATTEMPTS: u32 = 3;

fn lost_port_race(error: &Error) -> bool {
    matches!(error, Error::ControlPlane { etcd_log, api_server_log, .. }
        if etcd_log.contains("address already in use") || api_server_log.contains("address already in use"))
}

/// Ports handed out for servers: below Linux's ephemeral range
/// (32768–60999), so outgoing connections, which take their local port from
/// that range, never grab a port between our check and the server's bind.
const SERVER_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port that was free a moment ago, outside the ephemeral range.
pub fn free_port() -> Result<u16, Error> {
    let mut last_error = None;
    for _ in 0..100 {
        let port = rand::random_range(SERVER_PORTS);
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last_error = Some(e),
        }
    }
    Err(Error::Setup(format!(
        "cannot bind a loopback port in {SERVER_PORTS:?}: {}",
        last_error.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// What a control plane serves beyond what every test gets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Fit for a real kubelet (see [`crate::real_node`]): Node authorization
    /// and the NodeRestriction admission beside RBAC, the API server's client
    /// certificate for the kubelets' logs and exec, and a serving certificate
    /// for the `kubernetes` Service IP pods are told about.
    pub for_node: bool,
}

/// The `kubernetes` Service's IP: the first of `--service-cluster-ip-range`.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

pub struct ControlPlane {
    dir: PathBuf,
    /// Removes `dir` on drop, unless the caller chose a directory of its own.
    _temp_dir: Option<tempfile::TempDir>,
    api_server: Option<Child>,
    etcd: Option<Child>,
    kubeconfig: PathBuf,
    api_port: u16,
    ca: TestCa,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver in a temporary directory and waits
    /// until the API server is ready.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(Options::default()).await
    }

    /// Like [`ControlPlane::start`], with `options`.
    pub async fn start_with(options: Options) -> Result<Self, Error> {
        let mut attempt = 1;
        loop {
            let dir = tempfile::Builder::new()
                .prefix("kata-control-plane-")
                .tempdir()
                .map_err(|e| Error::Setup(format!("cannot create a temporary directory: {e}")))?;
            match Self::start_in(dir.path().to_path_buf(), Some(dir), options).await {
                // A port found free can be taken by a parallel test before
                // etcd or the API server binds it: start again on new ports.
                Err(error) if attempt < PORT_RACE_ATTEMPTS && lost_port_race(&error) => {
                    attempt += 1
                }
                result => return result,
            }
        }
    }

    /// Like [`ControlPlane::start`], keeping certificates, logs and etcd data
    /// in `dir`, which outlives the control plane (for `make cluster-up`).
    pub async fn start_in_dir(dir: PathBuf) -> Result<Self, Error> {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Self::start_in(dir, None, Options::default()).await
    }

    async fn start_in(
        root: PathBuf,
        temp_dir: Option<tempfile::TempDir>,
        options: Options,
    ) -> Result<Self, Error> {
        let bin = binary_dir()?;
        for name in ["etcd", "kube-apiserver"] {
            if !bin.join(name).is_file() {
                return Err(Error::Setup(format!(
                    "{} is missing; run tests/scripts/build-control-plane.sh",
                    bin.join(name).display()
                )));
            }
        }

        let ca = TestCa::new("kata-test-ca")?;
        let ca_file = root.join("ca.crt");
        fs::write(&ca_file, ca.cert_pem()).map_err(|e| Error::io(&ca_file, e))?;
        let mut serving_names = vec!["localhost", "127.0.0.1", "kubernetes.default.svc"];
        if options.for_node {
            serving_names.extend(["kubernetes", "kubernetes.default", KUBERNETES_SERVICE_IP]);
        }
        let (serving_cert, serving_key) =
            ca.server_cert(&serving_names)?.write(&root, "apiserver")?;
        let (admin_cert, admin_key) = ca
            .client_cert("kata-test-admin", &["system:masters"])?
            .write(&root, "admin")?;
        let (sa_private, sa_public) = service_account_key()?;
        let sa_key = root.join("service-account.key");
        let sa_pub = root.join("service-account.pub");
        fs::write(&sa_key, sa_private).map_err(|e| Error::io(&sa_key, e))?;
        fs::write(&sa_pub, sa_public).map_err(|e| Error::io(&sa_pub, e))?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;

        let mut plane = ControlPlane {
            kubeconfig: root.join("kubeconfig"),
            dir: root.clone(),
            _temp_dir: temp_dir,
            api_server: None,
            etcd: None,
            api_port,
            ca,
        };

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args([
            "--name=kata-test",
            &format!("--data-dir={}", root.join("etcd").display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=kata-test={peer_url}"),
            // Test data is disposable; skipping fsync makes writes cheap.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        plane.etcd = Some(plane.spawn_logged(etcd, "etcd")?);

        let mut api = Command::new(bin.join("kube-apiserver"));
        api.args([
            &format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={api_port}"),
            &format!("--cert-dir={}", root.join("certs").display()),
            &format!("--tls-cert-file={}", serving_cert.display()),
            &format!("--tls-private-key-file={}", serving_key.display()),
            &format!("--client-ca-file={}", ca_file.display()),
            &format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            &format!("--service-account-key-file={}", sa_pub.display()),
            &format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-cluster-ip-range=10.96.0.0/24",
            "--allow-privileged=true",
            // The `kubernetes` Service's endpoints would name 127.0.0.1,
            // which pods cannot reach; nothing here uses them.
            "--endpoint-reconciler-type=none",
            "--v=0",
        ]);
        if options.for_node {
            api.args(node_flags(&root, &plane.ca, &ca_file)?);
        } else {
            api.arg("--authorization-mode=RBAC");
        }
        plane.api_server = Some(plane.spawn_logged(api, "kube-apiserver")?);

        let kubeconfig = plane.kubeconfig.clone();
        plane.write_kubeconfig(&kubeconfig, &admin_cert, &admin_key)?;
        plane.wait_ready().await?;
        Ok(plane)
    }

    /// Writes a kubeconfig for this API server that authenticates with the
    /// client certificate `cert` and its key (signed by [`ControlPlane::ca`]).
    pub fn write_kubeconfig(&self, path: &Path, cert: &Path, key: &Path) -> Result<(), Error> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kata-test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: user\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: kata-test\n  context:\n    cluster: kata-test\n    user: user\ncurrent-context: kata-test\n",
            port = self.api_port,
            ca = self.ca_file().display(),
            cert = cert.display(),
            key = key.display(),
        );
        fs::write(path, kubeconfig).map_err(|e| Error::io(path, e))
    }

    /// The CA certificate every certificate here is signed by.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The private key the API server signs service-account tokens with,
    /// which kube-controller-manager signs them with too.
    pub fn service_account_key_file(&self) -> PathBuf {
        self.dir.join("service-account.key")
    }

    fn spawn_logged(&self, mut command: Command, name: &str) -> Result<Child, Error> {
        let log_path = self.log_path(name);
        let log = fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let log_err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        spawn_tied_to_process(command)
            .map_err(|e| Error::Setup(format!("cannot start {name}: {e}")))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The last lines of a process's log, for failure messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn startup_failure(&self, what: String) -> Error {
        Error::ControlPlane {
            what,
            etcd_log: self.log_tail("etcd", 20),
            api_server_log: self.log_tail("kube-apiserver", 40),
        }
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let client = self.client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(failure) = self.exited_child() {
                return Err(self.startup_failure(failure));
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Setup(e.to_string()))?;
            if client.request_text(request).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self
                    .startup_failure(format!("kube-apiserver not ready after {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Names a child that has exited, for a start-up failure.
    fn exited_child(&mut self) -> Option<String> {
        for (name, child) in [
            ("etcd", &mut self.etcd),
            ("kube-apiserver", &mut self.api_server),
        ] {
            if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                return Some(format!("{name} exited during start-up ({status})"));
            }
        }
        None
    }

    /// Path of an admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn api_server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Process ids of etcd and kube-apiserver, for tests of the teardown.
    pub fn pids(&self) -> Vec<u32> {
        [&self.etcd, &self.api_server]
            .into_iter()
            .flatten()
            .map(Child::id)
            .collect()
    }

    /// A client authenticated as the admin.
    pub async fn client(&self) -> Result<Client, Error> {
        let config = self.config().await?;
        Client::try_from(config).map_err(Error::Kube)
    }

    pub async fn config(&self) -> Result<Config, Error> {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| Error::Setup(e.to_string()))?;
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Setup(e.to_string()))
    }

    /// A client that authenticates with a bearer token (a ServiceAccount's, say).
    pub async fn client_with_token(&self, token: &str) -> Result<Client, Error> {
        let mut config = self.config().await?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Client::try_from(config).map_err(Error::Kube)
    }

    /// Applies the CRDs and waits until each is established and served.
    pub async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> Result<(), Error> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(crd),
            )
            .await
            .map_err(Error::Kube)?;
        }
        for crd in crds {
            wait_crd_served(&client, crd).await?;
        }
        Ok(())
    }

    /// Installs the real OpenShift MachineConfig, MachineConfigPool and
    /// ContainerRuntimeConfig CRDs (from `tests/openshift-crds/`).
    pub async fn install_openshift_crds(&self) -> Result<(), Error> {
        self.install_crds(&openshift_crds()?).await
    }
}

/// The API server's flags for serving a kubelet: Node authorization (a
/// kubelet may only touch its own Node and its pods' objects) and the
/// NodeRestriction admission that enforces it, on top of the defaults
/// (RuntimeClass and ServiceAccount admission among them); a client
/// certificate in `system:masters` for the kubelet's logs and exec, whose
/// serving certificate the test CA signs.
fn node_flags(root: &Path, ca: &TestCa, ca_file: &Path) -> Result<Vec<String>, Error> {
    let (cert, key) = ca
        .client_cert("kube-apiserver-kubelet-client", &["system:masters"])?
        .write(root, "apiserver-kubelet-client")?;
    Ok(vec![
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        format!("--kubelet-client-certificate={}", cert.display()),
        format!("--kubelet-client-key={}", key.display()),
        format!("--kubelet-certificate-authority={}", ca_file.display()),
        "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
    ])
}

/// The OpenShift Machine Config Operator CRDs, as published upstream.
pub fn openshift_crds() -> Result<Vec<CustomResourceDefinition>, Error> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("openshift-crds");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            serde_yaml::from_str(&text)
                .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
        })
        .collect()
}

async fn wait_crd_served(client: &Client, crd: &CustomResourceDefinition) -> Result<(), Error> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = api.get(&name).await.map_err(Error::Kube)?;
        let established = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        let served = if established {
            let version = crd
                .spec
                .versions
                .iter()
                .find(|v| v.served)
                .map(|v| v.name.clone())
                .unwrap_or_default();
            let gvk =
                kube::api::GroupVersionKind::gvk(&crd.spec.group, &version, &crd.spec.names.kind);
            kube::discovery::pinned_kind(client, &gvk).await.is_ok()
        } else {
            false
        };
        if served {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Setup(format!(
                "CRD {name} was not served within 60s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The API server first: stopping etcd under it makes its shutdown hang.
        if let Some(mut child) = self.api_server.take() {
            stop(&mut child, Duration::from_secs(10));
        }
        if let Some(mut child) = self.etcd.take() {
            stop(&mut child, Duration::from_secs(10));
        }
    }
}
