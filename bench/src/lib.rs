//! berth-bench: criterion micro-benchmarks of berth's hot paths (`cargo bench -p berth-bench`).
//!
//! The side-by-side benchmark against nginx + registry:2 is `scripts/bench.sh` (driver: `bench/bench.py`);
//! its method and figures are in `bench/README.md`. This library is empty: the benchmarks are in `benches/`.
