//! The fuzz targets' saved inputs, replayed by the main crate's `cargo test` (and so by
//! `scripts/test`): the seeds, every regression input kept under `fuzz/regressions/<target>/`
//! and the local corpus if there is one, through the very target bodies libFuzzer runs
//! (`fuzz/src/lib.rs`, compiled into this test), plus 20,000 mutations per target (about 2 s).
//! The coverage-guided run is `scripts/fuzz`.

#[path = "../fuzz/src/lib.rs"]
mod pgtenant_fuzz;

use std::path::Path;

/// Mutations per target here; `FUZZ_ITERATIONS` overrides.
const MUTATIONS: usize = 20_000;

#[test]
fn fuzz_targets_survive_their_saved_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mutations = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MUTATIONS);
    for line in pgtenant_fuzz::replay(&root, mutations) {
        eprintln!("{line}");
    }
}
