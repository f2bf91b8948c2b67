//! Under the `cuda` feature: compiles `kernels/*.cu` to PTX for compute capability 8.0 (A100)
//! and 9.0 (H100/H200) with nvcc, through cudaforge as candle-kernels does, and writes
//! `$OUT_DIR/kernels.rs` with one `(capability, ptx)` table per source. The trainer loads the
//! highest capability its GPU has. Without the feature there is nothing to build.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::fmt::Write as _;
    use std::path::PathBuf;

    /// The capabilities the PTX is compiled for: each runs on its own and newer GPUs.
    const CAPABILITIES: [usize; 2] = [80, 90];

    pub fn build() {
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let mut tables: std::collections::BTreeMap<String, Vec<(usize, PathBuf)>> = Default::default();
        for cap in CAPABILITIES {
            let dir = out.join(format!("sm{cap}"));
            cudaforge::KernelBuilder::new()
                .source_dir("kernels")
                .compute_cap_arch(&cap.to_string())
                .out_dir(&dir)
                .arg("-std=c++17")
                .arg("-O3")
                .build_ptx()
                .unwrap_or_else(|e| panic!("compiling kernels/*.cu for sm_{cap}: {e}"));
            for entry in std::fs::read_dir("kernels").expect("kernels/ exists") {
                let path = entry.expect("readable kernels/").path();
                if path.extension().is_some_and(|e| e == "cu") {
                    let stem = path.file_stem().and_then(|s| s.to_str()).expect("UTF-8 kernel name").to_string();
                    tables.entry(stem.clone()).or_default().push((cap, dir.join(format!("{stem}.ptx"))));
                }
            }
        }
        let mut rs = String::new();
        for (stem, versions) in tables {
            let name = stem.to_uppercase().replace(['.', '-'], "_");
            writeln!(rs, "pub const {name}: &[(usize, &str)] = &[").unwrap();
            for (cap, path) in versions {
                writeln!(rs, "    ({cap}, include_str!({:?})),", path.display().to_string()).unwrap();
            }
            writeln!(rs, "];").unwrap();
        }
        std::fs::write(out.join("kernels.rs"), rs).expect("writing kernels.rs");
    }
}
