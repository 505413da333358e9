//! Prints the RecordingJob CustomResourceDefinition as YAML. `cargo xtask crdgen` writes it into
//! `crds/` (and the chart); a test fails when the committed YAML differs from these types.

fn main() {
    print!("{}", mixdown_crds::crd_yaml());
}
