//! `make demo`: the operator end to end, as a user meets it.
//!
//! Starts a local control plane, moto_server as AWS KMS (with an
//! ECC_NIST_P256 signing key) and the OAuth server under Okta's paths;
//! registers the key's JWK (from `okta-token-operator jwk`) as a service app,
//! as one would in the Okta admin console; installs crds/ and deploy/'s RBAC
//! with kubectl; runs the operator with only its ServiceAccount's
//! permissions; applies an `OktaServiceToken`; waits until it is Ready;
//! prints what kubectl shows; stops everything it started.
//!
//! Exits non-zero, with the operator's log tail, when a step fails. Never
//! prints a token.
//!
//! `--operator PATH` (or `OKTA_TOKEN_OPERATOR_BIN`) names the operator
//! binary; `KUBECTL` overrides the kubectl to use.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use testbed::controlplane::{ControlPlane, KUBERNETES_VERSION, service_account_user};
use testbed::moto::Moto;
use testbed::oauth_server::OAuthServer;
use testbed::operator::{OperatorOptions, OperatorProcess};
use tokio::io::AsyncWriteExt as _;

const KEY_SPEC: &str = "ECC_NIST_P256";
const CLIENT_ID: &str = "0oa-demo-service";
const CLIENT_SCOPES: [&str; 2] = ["okta.users.read", "okta.groups.read"];
const TOKEN_TTL_SECONDS: u64 = 300;
const REQUESTED_SCOPE: &str = "okta.users.read";

const CRD_NAME: &str = "oktaservicetokens.okta-token-operator.dev";
/// deploy/'s RBAC, in the order kubectl must apply it.
const RBAC_FILES: [&str; 4] = [
    "deploy/namespace.yaml",
    "deploy/serviceaccount.yaml",
    "deploy/clusterrole.yaml",
    "deploy/clusterrolebinding.yaml",
];
/// The ServiceAccount of deploy/serviceaccount.yaml (namespace, name).
const OPERATOR_ACCOUNT: (&str, &str) = ("okta-token-operator", "okta-token-operator");

const NAMESPACE: &str = "demo";
const RESOURCE: &str = "okta-api";
const SECRET: &str = "okta-api-token";
const READY_TIMEOUT: &str = "120s";
const EVENTS_TIMEOUT: Duration = Duration::from_secs(15);
const LOG_TAIL_LINES: usize = 40;

#[tokio::main]
async fn main() -> ExitCode {
    let operator = match parse_args() {
        Ok(operator) => operator,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let began = Instant::now();
    let outcome = tokio::select! {
        outcome = run(&operator) => outcome,
        // Dropping `run` drops its guards, which stop every process.
        _ = tokio::signal::ctrl_c() => Err("interrupted; stopping everything".to_owned()),
    };
    match outcome {
        Ok(()) => {
            println!();
            println!("demo finished in {:.0} s", began.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!();
            eprintln!(
                "demo FAILED after {:.0} s: {error}",
                began.elapsed().as_secs_f64()
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(operator_binary: &Path) -> Result<(), String> {
    let repo = repo_root()?;
    if !operator_binary.is_file() {
        return Err(format!(
            "no operator binary at {}; build it with `cargo build --bin okta-token-operator`",
            operator_binary.display()
        ));
    }

    step(&format!(
        "Starting a local control plane: etcd, kube-apiserver {KUBERNETES_VERSION}, kube-controller-manager"
    ));
    let control_plane = blocking(ControlPlane::start).await?;
    let kubectl = Kubectl::new(&repo, control_plane.kubeconfig_path());
    detail(&format!(
        "ready in {:.1} s at {}",
        control_plane.startup_time().as_secs_f64(),
        control_plane.server_url()
    ));

    step(&format!(
        "Starting moto_server as AWS KMS and creating an {KEY_SPEC} signing key"
    ));
    let moto = blocking(Moto::start).await?;
    let key_arn = moto.create_signing_key(KEY_SPEC).await?;
    detail(&key_arn);

    step("Starting the OAuth server (Okta's token endpoint, private_key_jwt)");
    let oauth = blocking(OAuthServer::start).await?;
    detail(&oauth.origin());

    step(&format!(
        "Registering the key with service app {CLIENT_ID}: okta-token-operator jwk --kms-key-id ARN"
    ));
    let jwks = jwk(operator_binary, &key_arn, &moto.env()).await?;
    oauth.register_client(CLIENT_ID, &jwks, &CLIENT_SCOPES, TOKEN_TTL_SECONDS)?;
    detail(&format!(
        "kid {}, scopes {}, tokens live {TOKEN_TTL_SECONDS} s",
        jwks["keys"][0]["kid"].as_str().unwrap_or("?"),
        CLIENT_SCOPES.join(" ")
    ));

    step("Installing the CRD and the operator's RBAC, as a cluster admin does");
    kubectl.show(&["apply", "-f", "crds/"]).await?;
    kubectl
        .show(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{CRD_NAME}"),
            "--timeout=60s",
        ])
        .await?;
    let mut apply = vec!["apply"];
    for file in RBAC_FILES {
        apply.extend(["-f", file]);
    }
    kubectl.show(&apply).await?;

    let (account_namespace, account_name) = OPERATOR_ACCOUNT;
    let account = service_account_user(account_namespace, account_name);
    step(&format!(
        "Running okta-token-operator as {account} (only deploy/'s RBAC)"
    ));
    let log_dir = tempfile::Builder::new()
        .prefix("okta-token-operator-demo-")
        .tempdir()
        .map_err(|error| format!("cannot create a directory for the operator's log: {error}"))?;
    let log_path = log_dir.path().join("operator.log");
    let options = (
        operator_binary.to_owned(),
        control_plane.kubeconfig_as(&account),
        moto.env(),
        log_path.clone(),
    );
    let started = blocking(move || {
        let (binary, kubeconfig, env, log_path) = options;
        OperatorProcess::start(OperatorOptions {
            binary: &binary,
            kubeconfig: &kubeconfig,
            env,
            namespace: None,
            log_path,
        })
    })
    .await;
    let mut operator = match started {
        Ok(operator) => operator,
        Err(error) => {
            let kept = log_dir.keep();
            return Err(format!(
                "{error}\nthe operator's log is kept in {}",
                kept.display()
            ));
        }
    };
    detail(&format!(
        "ready; probes on 127.0.0.1:{}, log in {}",
        operator.probe_port(),
        log_path.display()
    ));

    if let Err(error) = use_it(&kubectl, &oauth, &key_arn).await {
        let tail = operator.log_tail(LOG_TAIL_LINES);
        let kept = log_dir.keep();
        return Err(format!(
            "{error}\n\nthe operator's log, last {LOG_TAIL_LINES} lines (all of it in {}):\n{tail}",
            kept.join("operator.log").display()
        ));
    }

    step("Stopping the operator, the OAuth server, moto_server and the control plane");
    operator.stop();
    drop(operator);
    drop(oauth);
    drop(moto);
    drop(control_plane);
    drop(log_dir);
    Ok(())
}

/// What a team does with the operator installed, and what it sees.
async fn use_it(kubectl: &Kubectl, oauth: &OAuthServer, key_arn: &str) -> Result<(), String> {
    step(&format!(
        "Creating namespace {NAMESPACE} and declaring an OktaServiceToken in it"
    ));
    kubectl.show(&["create", "namespace", NAMESPACE]).await?;
    let manifest = manifest(&oauth.origin(), key_arn);
    println!("    $ kubectl apply -f - <<EOF");
    for line in manifest.lines() {
        println!("    {line}");
    }
    println!("    EOF");
    let applied = kubectl.run(&["apply", "-f", "-"], Some(&manifest)).await?;
    print_indented(&applied);

    step(&format!("Waiting for {RESOURCE} to become Ready"));
    let began = Instant::now();
    let waited = kubectl
        .show(&[
            "wait",
            "--for=condition=Ready",
            &format!("oktaservicetoken/{RESOURCE}"),
            "-n",
            NAMESPACE,
            &format!("--timeout={READY_TIMEOUT}"),
        ])
        .await;
    if let Err(error) = waited {
        return Err(format!("{error}\n{}", conditions(kubectl).await));
    }
    detail(&format!(
        "Ready after {:.1} s",
        began.elapsed().as_secs_f64()
    ));

    step("What kubectl shows");
    kubectl
        .show(&["get", "oktaservicetokens", "-n", NAMESPACE])
        .await?;
    println!();
    kubectl
        .show(&["describe", "secret", SECRET, "-n", NAMESPACE])
        .await?;
    println!();
    show_events(kubectl).await?;

    step("What the token server says");
    let stats = oauth.stats(CLIENT_ID)?;
    detail(&format!(
        "{CLIENT_ID}: {} token request(s), {} token(s) issued",
        stats.token_requests, stats.tokens_issued
    ));
    let token = secret_token(kubectl).await?;
    let introspection = oauth.introspect(&token)?;
    drop(token);
    if introspection["active"] != Value::Bool(true) {
        return Err(format!(
            "the token in Secret {SECRET} is not active at the token server: active = {}",
            introspection["active"]
        ));
    }
    detail(&format!(
        "the token in Secret {SECRET} is active: client_id {}, scope {}, expires in {} s",
        introspection["client_id"].as_str().unwrap_or("?"),
        introspection["scope"].as_str().unwrap_or("?"),
        seconds_until(introspection["exp"].as_i64())
    ));
    Ok(())
}

/// The resource's status conditions, one a line, for a failure message.
async fn conditions(kubectl: &Kubectl) -> String {
    let template = r#"jsonpath={range .status.conditions[*]}  {.type}={.status} {.reason}: {.message}{"\n"}{end}"#;
    let args = [
        "get",
        "oktaservicetoken",
        RESOURCE,
        "-n",
        NAMESPACE,
        "-o",
        template,
    ];
    match kubectl.run(&args, None).await {
        Ok(text) if text.trim().is_empty() => format!("{RESOURCE} has no status conditions"),
        Ok(text) => format!("{RESOURCE}'s conditions:\n{}", text.trim_end()),
        Err(error) => format!("cannot read {RESOURCE}'s status: {error}"),
    }
}

/// The resource a team would commit next to its workload.
fn manifest(org_url: &str, key_arn: &str) -> String {
    format!(
        "apiVersion: okta-token-operator.dev/v1alpha1
kind: OktaServiceToken
metadata:
  name: {RESOURCE}
  namespace: {NAMESPACE}
spec:
  orgUrl: {org_url}
  authorizationServerId: default
  clientId: {CLIENT_ID}
  scopes:
    - {REQUESTED_SCOPE}
  signingKey:
    kmsKeyId: {key_arn}
  secretName: {SECRET}
"
    )
}

/// The resource's Events; the operator may publish them a moment after the
/// status turns Ready, so this waits briefly for the first one.
async fn show_events(kubectl: &Kubectl) -> Result<(), String> {
    let for_resource = format!("oktaservicetoken/{RESOURCE}");
    let args = ["events", "-n", NAMESPACE, "--for", &for_resource];
    let deadline = Instant::now() + EVENTS_TIMEOUT;
    loop {
        let events = kubectl.run(&args, None).await?;
        if !events.trim().is_empty() || Instant::now() >= deadline {
            println!("    $ kubectl {}", args.join(" "));
            if events.trim().is_empty() {
                detail("(no Events)");
            }
            print_indented(&events);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The access token from the Secret, to check it with the token server. It
/// is never printed.
async fn secret_token(kubectl: &Kubectl) -> Result<String, String> {
    let encoded = kubectl
        .run(
            &[
                "get",
                "secret",
                SECRET,
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.data.access_token}",
            ],
            None,
        )
        .await?;
    let decoded = BASE64
        .decode(encoded.trim())
        .map_err(|error| format!("Secret {SECRET}: access_token is not base64: {error}"))?;
    String::from_utf8(decoded)
        .map_err(|_| format!("Secret {SECRET}: access_token is not UTF-8"))
        .and_then(|token| {
            if token.is_empty() {
                Err(format!("Secret {SECRET} has no access_token"))
            } else {
                Ok(token)
            }
        })
}

/// `okta-token-operator jwk --kms-key-id ARN`: the JWK Set to paste into Okta.
async fn jwk(
    binary: &Path,
    key_arn: &str,
    env: &[(&'static str, String)],
) -> Result<Value, String> {
    let output = tokio::process::Command::new(binary)
        .args(["jwk", "--kms-key-id", key_arn])
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
    if !output.status.success() {
        return Err(format!(
            "okta-token-operator jwk failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let jwks: Value = serde_json::from_slice(&output.stdout).map_err(|error| {
        format!("okta-token-operator jwk printed something other than JSON: {error}")
    })?;
    if jwks["keys"].as_array().is_none_or(|keys| keys.is_empty()) {
        return Err(format!("okta-token-operator jwk printed no keys: {jwks}"));
    }
    Ok(jwks)
}

/// kubectl with the admin kubeconfig, run from the repository root so that
/// the paths it is shown with (`crds/`, `deploy/…`) are the ones a user types.
struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn new(dir: &Path, kubeconfig: &Path) -> Self {
        let program = std::env::var_os("KUBECTL")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/usr/bin/kubectl")).filter(|path| path.is_file()))
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        Self {
            program,
            kubeconfig: kubeconfig.to_owned(),
            dir: dir.to_owned(),
        }
    }

    /// Runs kubectl and returns its standard output; fails with its standard
    /// error.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(&self.dir)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.program.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|error| format!("cannot write to kubectl: {error}"))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|error| format!("kubectl {}: {error}", args.join(" ")))?;
        if !output.status.success() {
            return Err(format!(
                "`kubectl {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs kubectl and prints the command and its output, as in a terminal.
    async fn show(&self, args: &[&str]) -> Result<(), String> {
        let output = self.run(args, None).await?;
        println!("    $ kubectl {}", args.join(" "));
        print_indented(&output);
        Ok(())
    }
}

/// Runs a blocking harness call (they wait with `std::thread::sleep` and some
/// build runtimes of their own) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| format!("a start-up task failed: {error}"))?
}

fn step(text: &str) {
    println!();
    println!("==> {text}");
}

fn detail(text: &str) {
    println!("    {text}");
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

fn seconds_until(unix_time: Option<i64>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or_default();
    unix_time.map_or_else(|| "?".to_owned(), |exp| (exp - now).to_string())
}

/// The repository root: crds/ and deploy/ are read from there.
fn repo_root() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize()
        .map_err(|error| format!("cannot find the repository at {}: {error}", root.display()))
}

fn parse_args() -> Result<PathBuf, String> {
    let usage = "usage: demo [--operator PATH]  (or OKTA_TOKEN_OPERATOR_BIN=PATH)";
    let mut operator = std::env::var_os("OKTA_TOKEN_OPERATOR_BIN").map(PathBuf::from);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--operator" => operator = Some(PathBuf::from(args.next().ok_or(usage)?)),
            "-h" | "--help" => return Err(usage.into()),
            other => return Err(format!("unexpected argument {other:?}; {usage}")),
        }
    }
    match operator {
        Some(path) => Ok(path),
        None => Ok(repo_root()?.join("target/debug/okta-token-operator")),
    }
}
