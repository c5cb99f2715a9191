//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager (garbage collector and namespace controllers).
//!
//! The binaries are built from their Go modules by `make controlplane-bins`
//! (tests/controlplane/build.sh) and found through `OKTA_TEST_K8S_BIN_DIR`.
//! [`ControlPlane::start`] makes a fresh CA, serving and admin client
//! certificates and a service-account signing key, starts the three servers
//! on free ports, writes an admin kubeconfig and returns once `/readyz` says
//! ok. Dropping the [`ControlPlane`] stops everything and removes its
//! directory.
//!
//! Tests share one control plane per test binary through
//! [`ControlPlane::shared`] and isolate themselves with
//! [`ControlPlane::create_namespace`].
//!
//! ```no_run
//! # async fn demo() {
//! use testbed::controlplane::ControlPlane;
//! let control_plane = ControlPlane::shared();
//! let namespace = control_plane.create_namespace("my-test").await;
//! let admin = control_plane.client();
//! let as_operator = control_plane.service_account_client(&namespace, "operator");
//! # }
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Deserialize as _;

use crate::process::{Supervised, free_port, log_tail, port_open};

/// The Kubernetes version the Makefile builds (`K8S_VERSION`); its minor must
/// equal the k8s-openapi feature the crates compile (`v1_37`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";

/// Where `make controlplane-bins` puts the binaries.
pub const BIN_DIR_ENV: &str = "OKTA_TEST_K8S_BIN_DIR";

/// The controllers kube-controller-manager runs.
pub const CONTROLLERS: &str = "garbage-collector-controller,namespace-controller";

const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];
const DIR_PREFIX: &str = "okta-token-operator-cp-";
const START_ATTEMPTS: usize = 3;
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(120);

/// What to set up while the control plane starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// CustomResourceDefinition manifests (YAML or JSON, several documents
    /// per file allowed), applied and waited for until Established *before*
    /// kube-controller-manager starts: its garbage collector then knows
    /// their types at once, instead of on its next 30-second rediscovery.
    pub crd_files: Vec<PathBuf>,
}

impl Options {
    /// Options that install the CRDs in `files`.
    pub fn with_crds<P: AsRef<Path>>(files: impl IntoIterator<Item = P>) -> Self {
        Self {
            crd_files: files
                .into_iter()
                .map(|file| file.as_ref().to_owned())
                .collect(),
        }
    }
}

/// A running etcd + kube-apiserver + kube-controller-manager.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    server_url: String,
    etcd_port: u16,
    api_port: u16,
    ca_der: Vec<u8>,
    kubeconfig: PathBuf,
    pids: Vec<(&'static str, u32)>,
    startup: Duration,
    keeper: Mutex<Option<Keeper>>,
}

/// The thread that started the processes. Their parent-death signal fires
/// when the thread that spawned them exits, so it stays alive (parked on a
/// channel) for as long as the control plane runs, then stops them in order.
struct Keeper {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl ControlPlane {
    /// Starts a fresh control plane and waits until it is ready.
    ///
    /// Fails with a message naming `make controlplane-bins` when the binaries
    /// are missing, or quoting the log of the server that did not come up.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&Options::default())
    }

    /// Like [`ControlPlane::start`], with CRDs installed before
    /// kube-controller-manager starts.
    pub fn start_with(options: &Options) -> Result<Self, String> {
        let bin_dir = bin_dir()?;
        sweep_stale_dirs();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&bin_dir, options) {
                Ok(control_plane) => return Ok(control_plane),
                // Free ports are picked before the servers bind them; another
                // process can take one in between. Only that is worth a retry.
                Err(error) if error.contains("address already in use") => last_error = error,
                Err(error) => return Err(error),
            }
        }
        Err(last_error)
    }

    /// The control plane of this test binary, started on first use.
    ///
    /// Panics with the start-up error (in every test that asks) when it cannot
    /// start. Its processes die with the test binary: they have a parent-death
    /// signal, and an exit hook kills them and removes their directory.
    pub fn shared() -> &'static ControlPlane {
        Self::shared_with(&Options::default())
    }

    /// The control plane of this test binary, started with `options` by the
    /// first caller. A later caller's CRDs are applied too (idempotently,
    /// waiting until Established); the garbage collector then learns their
    /// types within 30 seconds. Blocks the calling thread: fine in a test,
    /// even inside `#[tokio::test]`.
    pub fn shared_with(options: &Options) -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        let mut started_here = false;
        let started = SHARED.get_or_init(|| {
            started_here = true;
            let started = ControlPlane::start_with(options);
            if let Ok(control_plane) = &started {
                register_exit_cleanup(control_plane);
            }
            started
        });
        let control_plane = match started {
            Ok(control_plane) => control_plane,
            Err(error) => panic!("the shared control plane did not start: {error}"),
        };
        if !started_here && !options.crd_files.is_empty() {
            let config = control_plane.config();
            // On a thread of its own: the caller may be inside a runtime.
            std::thread::scope(|scope| {
                scope
                    .spawn(|| apply_crds_blocking(config, &options.crd_files))
                    .join()
                    .unwrap_or_else(|_| Err("installing CRDs panicked".into()))
            })
            .unwrap_or_else(|error| panic!("cannot install CRDs: {error}"));
        }
        control_plane
    }

    fn start_once(bin_dir: &Path, options: &Options) -> Result<Self, String> {
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|error| format!("cannot create the control plane directory: {error}"))?;
        let etcd_port = free_port();
        let etcd_peer_port = free_port();
        let api_port = free_port();
        let server_url = format!("https://127.0.0.1:{api_port}");
        let pki =
            Pki::generate().map_err(|error| format!("cannot generate certificates: {error}"))?;
        pki.write(dir.path())
            .map_err(|error| format!("cannot write certificates: {error}"))?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server_url, &pki, None))
            .map_err(|error| format!("cannot write {}: {error}", kubeconfig.display()))?;

        let plan = Plan {
            bin_dir: bin_dir.to_owned(),
            dir: dir.path().to_owned(),
            etcd_port,
            etcd_peer_port,
            api_port,
            server_url: server_url.clone(),
            ca_der: pki.ca_der.clone(),
            kubeconfig: kubeconfig.clone(),
            crd_files: options.crd_files.clone(),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("controlplane-keeper".into())
            .spawn(move || keep(plan, ready_tx, stop_rx))
            .map_err(|error| format!("cannot start the control plane keeper thread: {error}"))?;
        let keeper = Keeper {
            stop: stop_tx,
            thread,
        };
        let pids = match ready_rx.recv() {
            Ok(Ok(pids)) => pids,
            Ok(Err(error)) => {
                let _ = keeper.thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = keeper.thread.join();
                return Err("the control plane keeper thread died during start-up".into());
            }
        };
        Ok(Self {
            dir,
            server_url,
            etcd_port,
            api_port,
            ca_der: pki.ca_der,
            kubeconfig,
            pids,
            startup: began.elapsed(),
            keeper: Mutex::new(Some(keeper)),
        })
    }

    /// `https://127.0.0.1:PORT` of kube-apiserver.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// The directory holding certificates, kubeconfig, etcd data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig (user `admin`, group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// How long [`ControlPlane::start`] took until `/readyz` said ok.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Process ids of etcd, kube-apiserver and kube-controller-manager.
    pub fn pids(&self) -> &[(&'static str, u32)] {
        &self.pids
    }

    /// The last `lines` lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`), for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        log_tail(&self.dir().join(format!("{component}.log")), lines)
    }

    /// Client configuration for the admin user (`system:masters`).
    pub fn config(&self) -> kube::Config {
        admin_config(&self.server_url, &self.ca_der, self.dir())
    }

    /// Client configuration that authenticates as admin and impersonates
    /// `user` (and `groups`, when not empty), so RBAC applies to `user`.
    pub fn config_as(&self, user: &str, groups: &[&str]) -> kube::Config {
        let mut config = self.config();
        config.auth_info.impersonate = Some(user.to_owned());
        if !groups.is_empty() {
            config.auth_info.impersonate_groups =
                Some(groups.iter().map(|group| (*group).to_owned()).collect());
        }
        config
    }

    /// Client configuration acting as the ServiceAccount `namespace/name`.
    /// The API server adds its groups (`system:serviceaccounts`,
    /// `system:serviceaccounts:NAMESPACE`, `system:authenticated`). The
    /// ServiceAccount object need not exist: RBAC only looks at the name.
    pub fn service_account_config(&self, namespace: &str, name: &str) -> kube::Config {
        let mut config = self.config_as(&service_account_user(namespace, name), &[]);
        config.default_namespace = namespace.to_owned();
        config
    }

    /// An admin client. Call it inside the Tokio runtime that will use it
    /// (each `#[tokio::test]` has its own).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("cannot build the admin client")
    }

    /// A client impersonating `user` (and `groups`); see [`Self::config_as`].
    pub fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        kube::Client::try_from(self.config_as(user, groups))
            .expect("cannot build an impersonating client")
    }

    /// A client acting as the ServiceAccount `namespace/name`.
    pub fn service_account_client(&self, namespace: &str, name: &str) -> kube::Client {
        kube::Client::try_from(self.service_account_config(namespace, name))
            .expect("cannot build a ServiceAccount client")
    }

    /// Writes a kubeconfig that impersonates `user` (for kubectl) and returns
    /// its path, inside [`Self::dir`].
    pub fn kubeconfig_as(&self, user: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = self.dir().join(format!(
            "kubeconfig-as-{}",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let pki = Pki::read(self.dir()).expect("cannot read the control plane certificates");
        std::fs::write(&path, kubeconfig_yaml(&self.server_url, &pki, Some(user)))
            .expect("cannot write an impersonating kubeconfig");
        path
    }

    /// Creates a namespace with a name unique in this control plane, starting
    /// with `prefix` (cut and lowercased to a DNS label), and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(self.client());
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(
                        "okta-token-operator.test/namespace".to_owned(),
                        "true".to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|error| panic!("cannot create namespace {name}: {error}"));
        name
    }

    /// Applies CRDs now and waits until they are Established (see
    /// [`apply_crds`]). kube-controller-manager's garbage collector learns
    /// types added after it started within 30 seconds; prefer
    /// [`Options::crd_files`] when a test depends on garbage collection.
    pub async fn install_crds(&self, files: &[PathBuf]) -> Result<Vec<String>, String> {
        apply_crds(self.client(), files).await
    }

    /// Stops kube-controller-manager, kube-apiserver and etcd (in that order).
    /// Dropping does the same.
    pub fn stop(&self) {
        let keeper = self
            .keeper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(keeper) = keeper {
            let _ = keeper.stop.send(());
            let _ = keeper.thread.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn admin_config(server_url: &str, ca_der: &[u8], dir: &Path) -> kube::Config {
    let mut config = kube::Config::new(server_url.parse().expect("the server URL is a valid URI"));
    config.root_cert = Some(vec![ca_der.to_vec()]);
    config.auth_info.client_certificate = Some(path_string(&dir.join("admin.crt")));
    config.auth_info.client_key = Some(path_string(&dir.join("admin.key")));
    config.default_namespace = "default".into();
    config
}

/// Applies the CustomResourceDefinitions in `files` (server-side apply,
/// field manager `testbed`) and waits until each is Established. Returns
/// their names.
pub async fn apply_crds(client: kube::Client, files: &[PathBuf]) -> Result<Vec<String>, String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document)
                .map_err(|error| format!("{} is not YAML: {error}", file.display()))?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_yaml::from_value(value).map_err(|error| {
                format!(
                    "{} holds no CustomResourceDefinition: {error}",
                    file.display()
                )
            })?;
            let name = crd
                .metadata
                .name
                .clone()
                .ok_or_else(|| format!("a CRD in {} has no name", file.display()))?;
            crds.patch(
                &name,
                &PatchParams::apply("testbed").force(),
                &Patch::Apply(&crd),
            )
            .await
            .map_err(|error| format!("cannot apply CRD {name}: {error}"))?;
            names.push(name);
        }
    }
    for name in &names {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let crd = crds
                .get(name)
                .await
                .map_err(|error| format!("cannot read CRD {name}: {error}"))?;
            let established = crd
                .status
                .and_then(|status| status.conditions)
                .unwrap_or_default()
                .iter()
                .any(|condition| condition.type_ == "Established" && condition.status == "True");
            if established {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("CRD {name} not Established after 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(names)
}

/// [`apply_crds`] on a runtime of its own; call it outside any runtime.
fn apply_crds_blocking(config: kube::Config, files: &[PathBuf]) -> Result<Vec<String>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot build a Tokio runtime: {error}"))?;
    runtime.block_on(async {
        let client = kube::Client::try_from(config)
            .map_err(|error| format!("cannot build the admin client: {error}"))?;
        apply_crds(client, files).await
    })
}

/// `system:serviceaccount:NAMESPACE:NAME`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// `prefix-N-XXXX`: a DNS label unique within this process (and very likely
/// across processes), at most 63 characters.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut cleaned: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    cleaned.truncate(40);
    let cleaned = cleaned.trim_matches('-');
    let cleaned = if cleaned.is_empty() { "test" } else { cleaned };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    let salt = (nanos ^ std::process::id().rotate_left(16)) % 0x10000;
    format!(
        "{cleaned}-{}-{salt:04x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The directory holding the binaries: `$OKTA_TEST_K8S_BIN_DIR`, else
/// `$HOME/.cache/okta-token-operator/k8s-v1.37.2/bin`. Fails, naming the
/// make target, when a binary is missing.
pub fn bin_dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").ok_or_else(|| {
                format!("neither {BIN_DIR_ENV} nor HOME is set; run `make controlplane-bins`")
            })?;
            PathBuf::from(home).join(format!(
                ".cache/okta-token-operator/k8s-{KUBERNETES_VERSION}/bin"
            ))
        }
    };
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|binary| !dir.join(binary).is_file())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "the control plane binaries {} are missing from {} ({BIN_DIR_ENV}); \
             run `make controlplane-bins` to build them (10-30 minutes the first time)",
            missing.join(", "),
            dir.display()
        ))
    }
}

impl Plan {
    fn admin_config(&self) -> kube::Config {
        admin_config(&self.server_url, &self.ca_der, &self.dir)
    }
}

/// Everything the keeper thread needs to start the servers.
struct Plan {
    bin_dir: PathBuf,
    dir: PathBuf,
    etcd_port: u16,
    etcd_peer_port: u16,
    api_port: u16,
    server_url: String,
    ca_der: Vec<u8>,
    kubeconfig: PathBuf,
    crd_files: Vec<PathBuf>,
}

type Started = Result<Vec<(&'static str, u32)>, String>;

/// Body of the keeper thread: start, report, wait for the stop signal (or
/// the control plane being dropped), stop in reverse order.
fn keep(plan: Plan, ready: mpsc::Sender<Started>, stop: mpsc::Receiver<()>) {
    let mut processes = Vec::new();
    let result = launch(&plan, &mut processes);
    let failed = result.is_err();
    let _ = ready.send(result.map(|()| {
        processes
            .iter()
            .map(|(name, process): &(&'static str, Supervised)| (*name, process.pid()))
            .collect()
    }));
    if !failed {
        // Returns on a stop message or when the sender is dropped.
        let _ = stop.recv();
    }
    while let Some((_, mut process)) = processes.pop() {
        process.stop();
    }
}

fn launch(plan: &Plan, processes: &mut Vec<(&'static str, Supervised)>) -> Result<(), String> {
    let dir = &plan.dir;
    let arg = |path: &str| dir.join(path).into_os_string();

    let etcd_url = format!("http://127.0.0.1:{}", plan.etcd_port);
    let peer_url = format!("http://127.0.0.1:{}", plan.etcd_peer_port);
    let mut etcd = Command::new(plan.bin_dir.join("etcd"));
    etcd.arg("--name=default")
        .arg("--data-dir")
        .arg(arg("etcd-data"))
        .args(["--listen-client-urls", &etcd_url])
        .args(["--advertise-client-urls", &etcd_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .arg(format!("--initial-cluster=default={peer_url}"))
        .args(["--unsafe-no-fsync", "--log-level=warn"]);
    let mut process = Supervised::spawn("etcd", etcd, &dir.join("etcd.log"))
        .map_err(|error| error.to_string())?;
    let etcd_port = plan.etcd_port;
    process.wait_until_ready("etcd /health", ETCD_TIMEOUT, || etcd_healthy(etcd_port))?;
    processes.push(("etcd", process));

    let mut apiserver = Command::new(plan.bin_dir.join("kube-apiserver"));
    apiserver
        .args(["--etcd-servers", &etcd_url])
        .args(["--bind-address", "127.0.0.1"])
        .arg(format!("--secure-port={}", plan.api_port))
        .args(["--advertise-address", "127.0.0.1"])
        .args(["--endpoint-reconciler-type", "none"])
        .arg("--cert-dir")
        .arg(arg("apiserver-certs"))
        .arg("--tls-cert-file")
        .arg(arg("apiserver.crt"))
        .arg("--tls-private-key-file")
        .arg(arg("apiserver.key"))
        .arg("--client-ca-file")
        .arg(arg("ca.crt"))
        .args(["--service-account-issuer", &plan.server_url])
        .arg("--service-account-key-file")
        .arg(arg("sa.pub"))
        .arg("--service-account-signing-key-file")
        .arg(arg("sa.key"))
        .args(["--service-cluster-ip-range", "10.0.0.0/24"])
        .args(["--authorization-mode", "RBAC"])
        .arg("--allow-privileged=true")
        .args(["--disable-admission-plugins", "ServiceAccount"]);
    let mut process =
        Supervised::spawn("kube-apiserver", apiserver, &dir.join("kube-apiserver.log"))
            .map_err(|error| error.to_string())?;
    process.wait_until_ready("kube-apiserver port", Duration::from_secs(30), || {
        port_open(plan.api_port)
    })?;
    wait_ready(&mut process, plan)?;
    processes.push(("kube-apiserver", process));

    if !plan.crd_files.is_empty() {
        apply_crds_blocking(plan.admin_config(), &plan.crd_files)?;
    }

    let mut controller_manager = Command::new(plan.bin_dir.join("kube-controller-manager"));
    controller_manager
        .arg("--kubeconfig")
        .arg(&plan.kubeconfig)
        .args(["--controllers", CONTROLLERS])
        .args(["--leader-elect=false", "--secure-port=0"]);
    let mut process = Supervised::spawn(
        "kube-controller-manager",
        controller_manager,
        &dir.join("kube-controller-manager.log"),
    )
    .map_err(|error| error.to_string())?;
    // It serves nothing to probe (--secure-port=0); make sure it did not
    // exit at once on a bad flag or kubeconfig.
    std::thread::sleep(Duration::from_millis(500));
    process.ensure_running()?;
    processes.push(("kube-controller-manager", process));
    Ok(())
}

/// Waits until kube-apiserver's `/readyz` answers `ok` to the admin client:
/// the post-start hooks (bootstrap RBAC roles, priority levels) are done.
fn wait_ready(process: &mut Supervised, plan: &Plan) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot build a Tokio runtime: {error}"))?;
    let mut config = plan.admin_config();
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    let client = runtime
        .block_on(async { kube::Client::try_from(config) })
        .map_err(|error| format!("cannot build the admin client: {error}"))?;
    let deadline = Instant::now() + APISERVER_TIMEOUT;
    loop {
        process.ensure_running()?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a GET request with an empty body is valid");
        let last = match runtime.block_on(client.request_text(request)) {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => body,
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "kube-apiserver /readyz not ok after {APISERVER_TIMEOUT:?} (last answer: {last}); \
                 last log lines:\n{}",
                process.log_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn etcd_healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

/// The CA, the kube-apiserver serving certificate, the admin client
/// certificate and the service-account key pair, in PEM.
struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    server_cert_pem: String,
    server_key_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    sa_key_pem: String,
    sa_public_pem: String,
}

impl Pki {
    fn generate() -> Result<Self, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = named("okta-token-operator test CA", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        server_params.distinguished_name = named("kube-apiserver", None);
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin_params = CertificateParams::new(Vec::<String>::new())?;
        admin_params.distinguished_name = named("admin", Some("system:masters"));
        admin_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        admin_params.use_authority_key_identifier_extension = true;
        let admin_cert = admin_params.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            sa_key_pem: sa_key.serialize_pem(),
            sa_public_pem: sa_key.public_key_pem(),
        })
    }

    fn files(&self) -> [(&'static str, &str); 7] {
        [
            ("ca.crt", &self.ca_pem),
            ("apiserver.crt", &self.server_cert_pem),
            ("apiserver.key", &self.server_key_pem),
            ("admin.crt", &self.admin_cert_pem),
            ("admin.key", &self.admin_key_pem),
            ("sa.key", &self.sa_key_pem),
            ("sa.pub", &self.sa_public_pem),
        ]
    }

    fn write(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        for (name, contents) in self.files() {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(name))?;
            file.write_all(contents.as_bytes())?;
        }
        Ok(())
    }

    /// Reads back what [`Pki::write`] wrote (the DER of the CA is not needed
    /// by the callers).
    fn read(dir: &Path) -> std::io::Result<Self> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        Ok(Self {
            ca_pem: read("ca.crt")?,
            ca_der: Vec::new(),
            server_cert_pem: read("apiserver.crt")?,
            server_key_pem: read("apiserver.key")?,
            admin_cert_pem: read("admin.crt")?,
            admin_key_pem: read("admin.key")?,
            sa_key_pem: read("sa.key")?,
            sa_public_pem: read("sa.pub")?,
        })
    }
}

fn named(common_name: &str, organization: Option<&str>) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name.push(DnType::CommonName, common_name);
    name
}

/// A kubeconfig with the credentials embedded, so a copy keeps working while
/// the control plane runs. `impersonate` adds `as:` to the user.
fn kubeconfig_yaml(server_url: &str, pki: &Pki, impersonate: Option<&str>) -> String {
    let mut yaml = String::new();
    let _ = write!(
        yaml,
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: okta-token-operator-test\n\
         \x20 cluster:\n\
         \x20   server: {server_url}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n\
         - name: admin\n\
         \x20 user:\n\
         \x20   client-certificate-data: {cert}\n\
         \x20   client-key-data: {key}\n",
        ca = BASE64.encode(&pki.ca_pem),
        cert = BASE64.encode(&pki.admin_cert_pem),
        key = BASE64.encode(&pki.admin_key_pem),
    );
    if let Some(user) = impersonate {
        let _ = writeln!(yaml, "    as: \"{user}\"");
    }
    let _ = write!(
        yaml,
        "contexts:\n\
         - name: okta-token-operator-test\n\
         \x20 context:\n\
         \x20   cluster: okta-token-operator-test\n\
         \x20   user: admin\n\
         \x20   namespace: default\n\
         current-context: okta-token-operator-test\n"
    );
    yaml
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Removes directories of control planes whose test process is gone (a
/// static instance is never dropped; a killed test never cleans up).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// What the exit hook of the shared instance needs.
static SHARED_CLEANUP: OnceLock<(Vec<u32>, PathBuf)> = OnceLock::new();

fn register_exit_cleanup(control_plane: &ControlPlane) {
    let pids = control_plane.pids.iter().map(|(_, pid)| *pid).collect();
    if SHARED_CLEANUP
        .set((pids, control_plane.dir().to_owned()))
        .is_ok()
    {
        // SAFETY: registers a plain function without captured state.
        unsafe {
            libc::atexit(cleanup_shared_at_exit);
        }
    }
}

/// Runs when the test binary exits normally: statics are not dropped, so
/// kill the shared servers (the parent-death signal would, a moment later)
/// and remove their directory.
extern "C" fn cleanup_shared_at_exit() {
    if let Some((pids, dir)) = SHARED_CLEANUP.get() {
        for pid in pids.iter().rev() {
            // SAFETY: kill(2) on the pids of our own children.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        for pid in pids {
            // SAFETY: reaps our own child; WNOHANG would race the kill.
            unsafe {
                libc::waitpid(*pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels() {
        let first = unique_name("My_Test::case");
        let second = unique_name("My_Test::case");
        assert_ne!(first, second);
        assert!(first.starts_with("my-test--case-"), "{first}");
        let long = unique_name(&"x".repeat(200));
        assert!(long.len() <= 63, "{long}");
        assert!(unique_name("--").starts_with("test-"));
    }

    #[test]
    fn service_account_user_names() {
        assert_eq!(
            service_account_user("ns", "op"),
            "system:serviceaccount:ns:op"
        );
    }

    #[test]
    fn kubeconfig_embeds_credentials_and_impersonation() {
        let pki = Pki::generate().expect("certificates");
        let yaml = kubeconfig_yaml(
            "https://127.0.0.1:1",
            &pki,
            Some("system:serviceaccount:a:b"),
        );
        assert!(yaml.contains("server: https://127.0.0.1:1"));
        assert!(yaml.contains(&BASE64.encode(&pki.ca_pem)));
        assert!(yaml.contains("    as: \"system:serviceaccount:a:b\"\n"));
        let plain = kubeconfig_yaml("https://127.0.0.1:1", &pki, None);
        assert!(!plain.contains("as:"));
    }
}
