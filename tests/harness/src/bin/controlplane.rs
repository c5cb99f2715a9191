//! `make controlplane`: a real Kubernetes control plane in the foreground.
//!
//! Starts etcd, kube-apiserver and kube-controller-manager on loopback,
//! prints how to point kubectl at them and runs until Ctrl-C (or SIGTERM),
//! then stops everything and removes its directory.
//!
//! `--kubeconfig PATH` also writes the admin kubeconfig to PATH (removed
//! again on exit), for scripts that want a fixed location. `--crd FILE`
//! (repeatable) installs CustomResourceDefinitions before
//! kube-controller-manager starts.

use std::path::PathBuf;
use std::process::ExitCode;

use testbed::controlplane::{CONTROLLERS, ControlPlane, KUBERNETES_VERSION, Options};

fn main() -> ExitCode {
    let (kubeconfig_copy, options) = match parse_args() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    eprintln!("starting etcd, kube-apiserver {KUBERNETES_VERSION} and kube-controller-manager ...");
    let control_plane = match ControlPlane::start_with(&options) {
        Ok(control_plane) => control_plane,
        Err(error) => {
            eprintln!("the control plane did not start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut kubeconfig = control_plane.kubeconfig_path().to_owned();
    if let Some(copy) = &kubeconfig_copy {
        if let Err(error) = std::fs::copy(&kubeconfig, copy) {
            eprintln!("cannot write {}: {error}", copy.display());
            return ExitCode::FAILURE;
        }
        kubeconfig = std::path::absolute(copy).unwrap_or_else(|_| copy.clone());
    }

    println!(
        "control plane ready in {:.1} s: kube-apiserver {KUBERNETES_VERSION} at {}",
        control_plane.startup_time().as_secs_f64(),
        control_plane.server_url()
    );
    println!("  controllers: {CONTROLLERS}");
    for crd in &options.crd_files {
        println!("  CRDs from {}", crd.display());
    }
    println!(
        "  logs, certificates and etcd data: {}",
        control_plane.dir().display()
    );
    println!();
    println!("In another shell:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get ns");
    println!();
    println!("Press Ctrl-C to stop.");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a Tokio runtime to wait for Ctrl-C");
    let signal = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.map(|()| "Ctrl-C"),
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    });
    match signal {
        Ok(name) => eprintln!("{name}: stopping the control plane ..."),
        Err(error) => eprintln!("cannot wait for Ctrl-C ({error}); stopping the control plane ..."),
    }
    control_plane.stop();
    if let Some(copy) = kubeconfig_copy {
        let _ = std::fs::remove_file(copy);
    }
    drop(control_plane);
    eprintln!("stopped");
    ExitCode::SUCCESS
}

fn parse_args() -> Result<(Option<PathBuf>, Options), String> {
    let usage = "usage: controlplane [--kubeconfig PATH] [--crd FILE]...";
    let mut args = std::env::args().skip(1);
    let mut kubeconfig = None;
    let mut options = Options::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kubeconfig" => {
                kubeconfig = Some(PathBuf::from(args.next().ok_or(usage)?));
            }
            "--crd" => options
                .crd_files
                .push(PathBuf::from(args.next().ok_or(usage)?)),
            "-h" | "--help" => return Err(usage.into()),
            other => return Err(format!("unexpected argument {other:?}; {usage}")),
        }
    }
    Ok((kubeconfig, options))
}
