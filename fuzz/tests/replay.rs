//! Runs every fuzz target body on a stable toolchain, without libFuzzer: the seeds, every
//! input saved under `regressions/<target>/` (crashes found by `scripts/fuzz`, kept as
//! regression tests), the local corpus if any, then `FUZZ_ITERATIONS` (default 20,000)
//! pseudo-random mutations of the seeds per target (see [`pgtenant_fuzz::replay`]).

use std::path::Path;

#[test]
fn every_target_survives_its_seeds_regressions_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    for line in pgtenant_fuzz::replay(root, iterations) {
        eprintln!("{line}");
    }
}
