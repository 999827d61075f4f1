//! Runs every fuzz target body on a stable toolchain, without libFuzzer: the seeds, every
//! input saved under `regressions/<target>/` (crashes found by `scripts/fuzz`, kept as
//! regression tests), then `FUZZ_ITERATIONS` (default 20,000) pseudo-random mutations of
//! the seeds per target.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("frames", pgtenant_fuzz::frames),
    ("startup", pgtenant_fuzz::startup),
    ("backend_decode", pgtenant_fuzz::backend_decode),
    ("frontend_decode", pgtenant_fuzz::frontend_decode),
    ("scram", pgtenant_fuzz::scram),
];

fn inputs(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".keep"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `seed`: flip, overwrite with an interesting byte, insert, delete,
/// truncate, or splice in a run of another length field.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 if at < v.len() => v[at] = [0, 0xff, 0x7f, 0x80, b'=', b',', 4][rng.below(7)],
            2 => v.insert(at, rng.next() as u8),
            3 if at < v.len() => {
                v.remove(at);
            }
            4 => v.truncate(at),
            _ => {
                let len = [0i32, 3, 4, 5, -1, i32::MAX, 10_001][rng.below(7)];
                let at = at.min(v.len());
                v.splice(at..at, len.to_be_bytes());
            }
        }
    }
    v
}

#[test]
fn every_target_survives_its_seeds_regressions_and_mutations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    for (name, target) in TARGETS {
        let seeds = inputs(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "no seeds for {name}");
        let regressions = inputs(&root.join("regressions").join(name));
        for input in seeds.iter().chain(&regressions) {
            target(input);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        for _ in 0..iterations {
            let seed = &seeds[rng.below(seeds.len())];
            target(&mutate(&mut rng, seed));
        }
        eprintln!(
            "{name}: {} seeds, {} regressions, {iterations} mutations",
            seeds.len(),
            regressions.len()
        );
    }
}
