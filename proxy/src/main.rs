//! `berth-proxy`: see `berth-proxy --help`.

fn main() -> std::process::ExitCode {
    berth_proxy::cli::main()
}
