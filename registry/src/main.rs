//! The `berth-registry` binary: parse arguments, load the configuration, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth_registry::{build, config::ENV_VARS, server, Config};

/// berth-registry: an OCI Distribution v1.1 registry (Docker Registry HTTP API v2) that stores images in
/// registry:2's on-disk layout, so an existing registry:2 data directory is served as it is.
#[derive(Parser)]
#[command(version, after_help = env_help())]
struct Cli {
    /// TOML configuration file (see docs/registry-config.md); environment variables override it.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry (the default).
    Serve,
    /// Load and validate the configuration, print every problem, and exit.
    CheckConfig,
}

fn env_help() -> String {
    let mut s = String::from("Environment overrides:\n");
    for (var, key) in ENV_VARS {
        s.push_str(&format!("  {var:<44} {key}\n"));
    }
    s
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("berth-registry: config: {p}");
            }
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::CheckConfig)) {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level)),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth-registry: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let addr = match config.listen_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("berth-registry: http.addr: {e}");
                return ExitCode::from(2);
            }
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("berth-registry: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let root = config.storage_description();
        let app = match build(config) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("berth-registry: storage {root}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(listen = %local, storage = %root, "berth-registry listening");
        // Scripts and tests read this line to learn the bound port.
        println!("berth-registry listening on {local}");
        server::serve(listener, app, shutdown_signal()).await;
        tracing::info!("berth-registry stopped");
        ExitCode::SUCCESS
    })
}
