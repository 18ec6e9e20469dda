//! `hoist tree-digest REF` computes an image's tree from its layers in
//! memory; it must list exactly what unpacking the same image to disk
//! (`hoist materialize --rootfs copy`) gives.

mod support;

use support::*;

fn same_tree(reference: &str) {
    let store = tempfile::tempdir().unwrap();
    let out = store.path().join("rootfs");
    ok(hoist(store.path())
        .args([
            "materialize",
            "--rootfs",
            "copy",
            "--benchmark",
            reference,
            "--out",
        ])
        .arg(&out));
    let from_layers = stdout(&ok(hoist(store.path()).args([
        "tree-digest",
        "--list",
        reference,
    ])));
    let from_disk = stdout(&ok(hoist(store.path())
        .arg("tree-digest")
        .arg("--list")
        .arg(&out)));
    assert!(from_layers.lines().count() > 5, "{from_layers}");
    if from_layers != from_disk {
        let a: Vec<&str> = from_layers.lines().collect();
        let b: Vec<&str> = from_disk.lines().collect();
        let only_layers: Vec<_> = a.iter().filter(|l| !b.contains(l)).take(20).collect();
        let only_disk: Vec<_> = b.iter().filter(|l| !a.contains(l)).take(20).collect();
        panic!("{reference}: tree from layers differs from disk\n- layers only: {only_layers:#?}\n- disk only: {only_disk:#?}");
    }
}

#[test]
fn fixtures_small_and_base_match_their_unpacked_trees() {
    if !is_root() {
        skip("unpacking with exact ownership needs root");
        return;
    }
    let Some(oci) = env_or_skip("HOIST_FIXTURE_OCI") else {
        return;
    };
    same_tree(&format!("oci:{oci}:small"));
    same_tree(&format!("oci:{oci}:base"));
}

#[test]
fn sample_benchmark_matches_its_unpacked_tree() {
    if !is_root() {
        skip("unpacking with exact ownership needs root");
        return;
    }
    let Some(oci) = env_or_skip("HOIST_SAMPLES_OCI") else {
        return;
    };
    same_tree(&format!("oci:{oci}:pyfix"));
}
