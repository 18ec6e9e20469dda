//! Arbitrary bytes as a layer, plain and gzip-wrapped, applied over a fresh
//! directory in both output forms. Errors are fine; panics are bugs.
//! Anything written outside the fresh directory is a bug too: the target
//! sits in a parent directory that must stay empty but for it.

#![no_main]

use std::fs::File;
use std::io::Write;

use hoist::unpack::{apply_layer, ApplyOptions, Limits, OutputMode};
use libfuzzer_sys::fuzz_target;

fn run(layer: &[u8], media_type: &str, mode: OutputMode) {
    let parent = tempfile::tempdir().expect("tempdir");
    let target = parent.path().join("target");
    std::fs::create_dir(&target).expect("mkdir target");
    let fd = File::open(&target).expect("open target");
    let opts = ApplyOptions {
        mode,
        // Small caps keep every run fast and in memory.
        limits: Limits {
            max_uncompressed_bytes: 16 << 20,
            max_ratio: 1000,
            ratio_grace_bytes: 1 << 20,
        },
        ..ApplyOptions::default()
    };
    // Errors are the expected outcome for most inputs; only panics and
    // writes outside the target are bugs.
    let _ = apply_layer(layer, media_type, &fd, &opts);
    let names: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read parent")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["target"], "something was written beside the target");
}

fuzz_target!(|data: &[u8]| {
    let mode = match data.first() {
        Some(b) if b & 1 == 1 => OutputMode::OverlayLayer,
        _ => OutputMode::Tree,
    };
    run(data, "application/vnd.oci.image.layer.v1.tar", mode);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    let gz = gz.finish().expect("gzip");
    run(&gz, "application/vnd.oci.image.layer.v1.tar+gzip", mode);
    // Raw bytes under a gzip type: the magic check and the decoder.
    run(
        data,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        mode,
    );
});
