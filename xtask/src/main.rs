//! Developer commands: `cargo xtask <command>`.
//!
//! - `crdgen`: writes the RecordingJob CRD generated from `crds/src` into `crds/recordingjob.yaml`
//!   and, once the chart exists, `charts/mixdown/crds/recordingjob.yaml`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Mixdown developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the RecordingJob CRD YAML from the Rust types.
    Crdgen,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crdgen => crdgen(&workspace_root()),
    }
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
