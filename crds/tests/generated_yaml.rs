//! The committed CRD YAML is generated, never edited: this fails when it drifts from the types.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let committed = include_str!("../recordingjob.yaml");
    assert!(
        committed == mixdown_crds::crd_yaml(),
        "crds/recordingjob.yaml is out of date with crds/src: run `cargo xtask crdgen` and commit the result"
    );
}

#[test]
fn chart_crd_matches_the_types_when_the_chart_exists() {
    let chart_crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/mixdown/crds/recordingjob.yaml"
    );
    if std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/mixdown")
        .exists()
    {
        let committed = std::fs::read_to_string(chart_crd)
            .expect("the chart exists, so it must carry charts/mixdown/crds/recordingjob.yaml");
        assert!(
            committed == mixdown_crds::crd_yaml(),
            "charts/mixdown/crds/recordingjob.yaml is out of date: run `cargo xtask crdgen`"
        );
    }
}
