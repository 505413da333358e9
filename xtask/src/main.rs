//! Developer commands: `cargo xtask <command>`.
//!
//! - `crdgen`: writes the RecordingJob CRD generated from `crds/src` into `crds/recordingjob.yaml`
//!   and, once the chart exists, `charts/mixdown/crds/recordingjob.yaml`.
//! - `test`: the whole test suite as CI runs it: prerequisites checked (loudly), the tests' npm
//!   packages installed from their lockfiles, formatting, clippy, the worker image, then every
//!   unit and integration test on a current Kubernetes (1.34), and the suites that hold the
//!   old-server fallbacks honest (the CRD contract, the operator's end-to-end tests) on the
//!   oldest one Mixdown supports (1.20) too.
//! - `up`: all of Mixdown on this machine (local control plane, storage, pod runner, operator,
//!   API with the studio page), built in release mode, until Ctrl-C; with `--kubeconfig` and
//!   storage settings, only the operator and the API, against that cluster and storage.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Mixdown developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Regenerate the RecordingJob CRD YAML from the Rust types.
    Crdgen,
    /// Run every check and test: fmt, clippy, the image builds, and `cargo test --workspace`.
    Test {
        /// Skip building the images with podman (their tests then fail, naming the cause).
        #[arg(long)]
        skip_image: bool,
        /// Which Kubernetes the control-plane suites run on: `both` (every suite on the
        /// current version, the old-server set on 1.20 as well), `current`, or `1.20` (only the
        /// old-server set).
        #[arg(long, value_enum, default_value_t = Kubernetes::Both)]
        kubernetes: Kubernetes,
        /// Extra arguments for `cargo test`, after `--` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Run all of Mixdown on this machine until Ctrl-C: the local control plane, storage (kept in
    /// `.mixdown/`), the pod runner with the worker, the operator, and the API with the studio.
    Up {
        /// Arguments for `mixdown-local` (see `cargo xtask up -- --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// The Kubernetes versions `cargo xtask test` runs the control-plane suites on.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kubernetes {
    Both,
    Current,
    #[value(name = "1.20")]
    Old,
}

/// The `KUBE_VERSION` of `tests/envtest/setup.sh` that every control-plane suite runs on.
const CURRENT_KUBERNETES: &str = "1.34";
/// The oldest Kubernetes Mixdown supports, where the operator and the CRD take their fallbacks
/// (no `podFailurePolicy`, no CEL validation rules).
const OLD_KUBERNETES: &str = "1.20";
/// Where the old version's folder may be given instead of running the setup script.
const OLD_ASSETS_VAR: &str = "MIXDOWN_KUBEBUILDER_ASSETS_1_20";
/// The test targets that run on the old version too. They hold what differs by version: the CRD
/// as the server takes it (`crd`, `crd_rules`), and the operator's fallbacks (`server_versions`,
/// and `e2e`: the operator's and the API's end-to-end tests). Selected by name across the
/// workspace, so they are the very builds of the first run: a `-p` selection would resolve other
/// features and compile the dependencies a second time.
const OLD_KUBERNETES_TESTS: &[&str] = &["crd", "crd_rules", "server_versions", "e2e"];

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    match Cli::parse().command {
        Cmd::Crdgen => crdgen(&root),
        Cmd::Test {
            skip_image,
            kubernetes,
            cargo_test_args,
        } => test(&root, skip_image, kubernetes, &cargo_test_args),
        Cmd::Up { args } => up(&root, &args),
    }
}

/// The font the mixdown writes participants' names in (the worker's `--font` default).
const MIXDOWN_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// What the local run needs on this machine, and how to get it on Debian: programs on PATH, and
/// files named by their absolute path.
const LOCAL_PREREQUISITES: &[(&str, &str)] = &[
    ("ffmpeg", "sudo apt-get install ffmpeg"),
    ("ffprobe", "sudo apt-get install ffmpeg"),
    (MIXDOWN_FONT, "sudo apt-get install fonts-dejavu-core"),
    (
        "go",
        "Go 1.26 or newer, which builds the local Kubernetes binaries once (tests/envtest/setup.sh)",
    ),
];

fn up(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut sh = Shell {
        root: root.to_path_buf(),
        env: Vec::new(),
    };
    // Against a real cluster (`--kubeconfig`) only the operator and the API run here: no local
    // control plane, and the worker (with its ffmpeg) runs in the cluster.
    let on_a_cluster = args
        .iter()
        .any(|a| a == "--kubeconfig" || a.starts_with("--kubeconfig="));
    if !on_a_cluster {
        if let Some(missing) = missing(LOCAL_PREREQUISITES) {
            bail!("Mixdown's local run needs:\n{missing}");
        }
        prepare_envtest(&mut sh, CURRENT_KUBERNETES)?;
    }
    // Every binary the run starts, built once, in release mode (the worker encodes video).
    sh.run(sh.cmd("cargo").args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "mixdown-operator",
        "-p",
        "mixdown-api",
        "-p",
        "mixdown-worker",
        "-p",
        "mixdown-testkit",
        "--bin",
        "mixdown-operator",
        "--bin",
        "mixdown-api",
        "--bin",
        "mixdown-worker",
        "--bin",
        "mixdown-local",
    ]))
    .context("building Mixdown")?;
    let local = target_dir(root).join("release/mixdown-local");
    // mixdown-local takes this process's place, so Ctrl-C reaches it alone and the prompt
    // comes back only once it stopped everything it started.
    use std::os::unix::process::CommandExt;
    let error = sh
        .cmd(local.to_str().unwrap_or("mixdown-local"))
        .args(args)
        .exec();
    Err(error).context("starting mixdown-local")
}

/// Cargo's target folder: `CARGO_TARGET_DIR` (relative to the workspace, as cargo reads it) or
/// `target/`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn crdgen(root: &Path) -> anyhow::Result<()> {
    let yaml = mixdown_crds::crd_yaml();
    let mut targets = vec![root.join("crds/recordingjob.yaml")];
    if root.join("charts/mixdown").is_dir() {
        targets.push(root.join("charts/mixdown/crds/recordingjob.yaml"));
    }
    for target in targets {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&target, &yaml).with_context(|| format!("writing {}", target.display()))?;
        println!("wrote {}", target.display());
    }
    Ok(())
}

/// Programs the integration tests run, and where they come from on Debian.
const PREREQUISITES: &[(&str, &str)] = &[
    ("ffmpeg", "apt-get install ffmpeg"),
    ("ffprobe", "apt-get install ffmpeg"),
    (MIXDOWN_FONT, "apt-get install fonts-dejavu-core"),
    ("etcd", "apt-get install etcd-server"),
    ("kubectl", "apt-get install kubernetes-client"),
    ("podman", "apt-get install podman runc"),
    ("runc", "apt-get install runc"),
    ("node", "apt-get install nodejs"),
    ("npm", "apt-get install npm"),
    ("chromium", "apt-get install chromium"),
    (
        "go",
        "Go 1.26 or newer, which builds the current Kubernetes binaries and the helm CLI the tests run",
    ),
];

/// npm packages the tests use, each installed from its folder's lockfile (`npm ci`).
const NPM_FOLDERS: &[&str] = &["api/tests/client"];

fn test(
    root: &Path,
    skip_image: bool,
    kubernetes: Kubernetes,
    cargo_test_args: &[String],
) -> anyhow::Result<()> {
    if let Some(missing) = missing(PREREQUISITES) {
        bail!(
            "the tests need programs that are not installed:\n{missing}\n(`bash .ci/run` installs them all on Debian)"
        );
    }

    let mut sh = Shell {
        root: root.to_path_buf(),
        env: Vec::new(),
    };
    let old_assets = if kubernetes == Kubernetes::Current {
        None
    } else {
        Some(old_envtest(&sh)?)
    };
    if kubernetes != Kubernetes::Old {
        prepare_envtest(&mut sh, CURRENT_KUBERNETES)?;
    }
    prepare_helm(&mut sh)?;

    for folder in NPM_FOLDERS {
        sh.run(
            sh.cmd("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
                // The studio tests drive Debian's Chromium; no browser is ever downloaded.
                .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
                .current_dir(root.join(folder)),
        )
        .with_context(|| format!("installing the npm packages of {folder} (`npm ci`)"))?;
    }

    sh.run(sh.cmd("cargo").args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    sh.run(sh.cmd("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems")?;
    if !skip_image {
        // The worker's, the operator's and the API's, from the code under test.
        sh.run(
            sh.cmd("bash")
                .args(["ffmpeg-image/build.sh", "--component", "all"]),
        )
        .context("building the images (ffmpeg-image/build.sh --component all)")?;
    }
    // `cargo test --workspace` builds every workspace binary before any test runs, with the
    // features of the whole test build: tests that run Mixdown's binaries as processes take those
    // (MIXDOWN_BIN_DIR) instead of building each package again with its own features, which
    // added a copy of the dependencies per package to the target folder.
    let profile = if cargo_test_args.iter().any(|a| a == "--release") {
        "release"
    } else {
        "debug"
    };
    let bin_dir = target_dir(root).join(profile);
    let mut failed = Vec::new();
    if kubernetes != Kubernetes::Old {
        let started = std::time::Instant::now();
        let result = sh.run(
            sh.cmd("cargo")
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(cargo_test_args)
                .env("MIXDOWN_BIN_DIR", &bin_dir),
        );
        println!(
            "xtask: every test on Kubernetes {CURRENT_KUBERNETES}: {} in {} s",
            if result.is_ok() { "passed" } else { "FAILED" },
            started.elapsed().as_secs()
        );
        if result.is_err() {
            failed.push(format!("tests on Kubernetes {CURRENT_KUBERNETES}"));
        }
    }
    if let Some(old_assets) = old_assets {
        // The same build as above (same profile and features): nothing is compiled again.
        let started = std::time::Instant::now();
        let mut command = sh.cmd("cargo");
        command.args(["test", "--workspace", "--no-fail-fast"]);
        for target in OLD_KUBERNETES_TESTS {
            command.args(["--test", target]);
        }
        command
            .args(cargo_test_args)
            .env("KUBEBUILDER_ASSETS", &old_assets);
        // The binaries the first run built; alone, the tests build the ones they run.
        if kubernetes == Kubernetes::Both {
            command.env("MIXDOWN_BIN_DIR", &bin_dir);
        }
        let result = sh.run(&mut command);
        println!(
            "xtask: the old-server suites on Kubernetes {OLD_KUBERNETES}: {} in {} s",
            if result.is_ok() { "passed" } else { "FAILED" },
            started.elapsed().as_secs()
        );
        if result.is_err() {
            failed.push(format!("tests on Kubernetes {OLD_KUBERNETES}"));
        }
    }
    if !failed.is_empty() {
        bail!("{} failed", failed.join(" and "));
    }
    println!("xtask: every check and test passed");
    Ok(())
}

/// Runs commands from the workspace root with the environment the tests need.
struct Shell {
    root: PathBuf,
    env: Vec<(String, String)>,
}

impl Shell {
    fn cmd(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(&self.root)
            .envs(self.env.iter().cloned());
        command
    }

    fn run(&self, command: &mut Command) -> anyhow::Result<()> {
        let status = command
            .status()
            .with_context(|| format!("starting {command:?}"))?;
        if !status.success() {
            bail!("{command:?} exited with {status}");
        }
        Ok(())
    }

    fn capture(&self, command: &mut Command) -> anyhow::Result<String> {
        let output = command
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("starting {command:?}"))?;
        if !output.status.success() {
            bail!("{command:?} exited with {}", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// The programs of `prerequisites` not on PATH, one `  program: how to install it` line each.
fn missing(prerequisites: &[(&str, &str)]) -> Option<String> {
    let missing: Vec<String> = prerequisites
        .iter()
        .filter(|(program, _)| {
            if program.starts_with('/') {
                !Path::new(program).exists()
            } else {
                !on_path(program)
            }
        })
        .map(|(program, install)| format!("  {program}: {install}"))
        .collect();
    (!missing.is_empty()).then(|| missing.join("\n"))
}

/// Sets MIXDOWN_HELM for `sh`'s commands, unless it is set: the helm CLI the chart tests run, as
/// `tests/helm/setup.sh` builds it from its Go module (cached after the first build).
fn prepare_helm(sh: &mut Shell) -> anyhow::Result<()> {
    prepare_from_script(sh, "MIXDOWN_HELM", "tests/helm/setup.sh", "the helm CLI")
}

/// Sets KUBEBUILDER_ASSETS for `sh`'s commands, unless it is set: the local Kubernetes binaries
/// of `kube_version` as `tests/envtest/setup.sh` prepares them.
fn prepare_envtest(sh: &mut Shell, kube_version: &str) -> anyhow::Result<()> {
    sh.env.push(("KUBE_VERSION".into(), kube_version.into()));
    let prepared = prepare_from_script(
        sh,
        "KUBEBUILDER_ASSETS",
        "tests/envtest/setup.sh",
        &format!("the Kubernetes {kube_version} binaries (KUBEBUILDER_ASSETS)"),
    );
    sh.env.retain(|(var, _)| var != "KUBE_VERSION");
    prepared
}

/// The folder of the old version's binaries: `MIXDOWN_KUBEBUILDER_ASSETS_1_20`, or what
/// `KUBE_VERSION=1.20 tests/envtest/setup.sh` prepares.
fn old_envtest(sh: &Shell) -> anyhow::Result<String> {
    if let Some(dir) = std::env::var_os(OLD_ASSETS_VAR) {
        return Ok(dir.to_string_lossy().into_owned());
    }
    let output = sh
        .capture(
            sh.cmd("bash")
                .arg("tests/envtest/setup.sh")
                .env("KUBE_VERSION", OLD_KUBERNETES),
        )
        .with_context(|| {
            format!(
                "preparing the Kubernetes {OLD_KUBERNETES} binaries with tests/envtest/setup.sh"
            )
        })?;
    let dir = output.lines().last().unwrap_or_default().trim().to_string();
    println!("xtask: {OLD_ASSETS_VAR}={dir}");
    Ok(dir)
}

/// Sets `var` for `sh`'s commands, unless it is set, to the last line `script` prints (the setup
/// scripts' convention: a path, after what they did on stderr).
fn prepare_from_script(sh: &mut Shell, var: &str, script: &str, what: &str) -> anyhow::Result<()> {
    if std::env::var_os(var).is_some() {
        return Ok(());
    }
    let output = sh
        .capture(sh.cmd("bash").arg(script))
        .with_context(|| format!("preparing {what} with {script}"))?;
    let value = output.lines().last().unwrap_or_default().trim().to_string();
    println!("xtask: {var}={value}");
    sh.env.push((var.into(), value));
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
