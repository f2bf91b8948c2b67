//! Goodhart's torch generator gives what `torch.randperm(n, generator=torch.Generator()
//! .manual_seed(seed))` gives on the CPU, for every n from 1 to 2000 and five seeds (fixture made
//! by torch itself: `tests/fixtures/torch-randperm/make_fixtures.py`). accelerate's
//! `SeedableRandomSampler`, and so TRL's data order, is exactly these permutations.

mod common;

use std::path::PathBuf;

use common::read_json;
use trainer::data::TorchGenerator;

const MODULUS: u128 = (1 << 61) - 1;

/// The fixture's `block_hash`: a polynomial hash of a block of permutations, in order.
fn block_hash(perms: impl Iterator<Item = Vec<usize>>) -> u64 {
    let mut h: u128 = 0;
    for perm in perms {
        for &x in &perm {
            h = (h * 1_000_003 + x as u128 + 1) % MODULUS;
        }
        h = (h * 1_000_003 + perm.len() as u128) % MODULUS;
    }
    h as u64
}

fn randperm(n: usize, seed: u64) -> Vec<usize> {
    TorchGenerator::manual_seed(seed).randperm(n)
}

#[test]
fn randperm_matches_torch_for_every_size_up_to_2000_and_five_seeds() {
    let fixture =
        read_json(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch-randperm/randperm.json"));
    let (max_n, block) = (fixture["max_n"].as_u64().unwrap() as usize, fixture["block"].as_u64().unwrap() as usize);
    let seeds = fixture["seeds"].as_object().unwrap();
    assert_eq!(seeds.len(), 5);
    for (seed, expected) in seeds {
        let seed: u64 = seed.parse().unwrap();
        let full = |key: &str| -> Vec<usize> { serde_json::from_value(expected[key].clone()).unwrap() };
        assert_eq!(randperm(10, seed), full("n10"), "seed {seed}, n = 10");
        assert_eq!(randperm(37, seed), full("n37"), "seed {seed}, n = 37");
        let hashes: Vec<u64> = serde_json::from_value(expected["block_hashes"].clone()).unwrap();
        assert_eq!(hashes.len(), max_n / block);
        for (b, want) in hashes.iter().enumerate() {
            let sizes = b * block + 1..=(b + 1) * block;
            let got = block_hash(sizes.clone().map(|n| randperm(n, seed)));
            assert_eq!(got, *want, "seed {seed}: a permutation of a size in {sizes:?} differs from torch's");
        }
    }
}
