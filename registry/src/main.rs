//! The `berth-registry` binary: parse arguments, load the configuration, serve.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use berth_registry::{build, config::ENV_VARS, server, Config};

/// berth-registry: an OCI Distribution v1.1 registry (Docker Registry HTTP API v2) that stores images in
/// registry:2's on-disk layout, so an existing registry:2 data directory is served as it is.
#[derive(Parser)]
#[command(version, after_help = env_help())]
struct Cli {
    /// TOML configuration file (see docs/registry.md); environment variables override it.
    #[arg(long, short = 'c', global = true, env = "REGISTRY_CONFIGURATION_PATH")]
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
    /// Collect garbage once in the configured storage and exit. Safe while registries serve it: pushes in
    /// flight are never broken, and only one collector runs at a time (docs/gc.md).
    Gc {
        /// Report what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove manifests that no tag reaches (children of kept indexes and referrers of kept
        /// manifests stay).
        #[arg(long)]
        delete_untagged: bool,
        /// Print one JSON object (`blobs`, `bytes`, `manifests`, `links`, `uploads`, ...) instead of text.
        #[arg(long)]
        json: bool,
        /// Grace period, like 90s, 10m, 1h or 0 (default: gc.grace, env BERTH_GC_GRACE).
        #[arg(long, value_parser = berth_registry::config::parse_duration)]
        grace: Option<std::time::Duration>,
    },
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

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("berth-registry: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `berth-registry gc`: one collection, reported on stdout.
fn run_gc(config: Config, opts: berth_registry::store::gc::GcOptions, json: bool) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let root = config.storage_description();
        let app = match build(config) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("berth-registry: storage {root}: {e}");
                return ExitCode::FAILURE;
            }
        };
        match app.store.collect_garbage(&opts).await {
            Ok(report) => {
                if json {
                    match serde_json::to_string(&report) {
                        Ok(s) => println!("{s}"),
                        Err(e) => {
                            eprintln!("berth-registry: gc: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                } else {
                    let verb = if report.dry_run {
                        "would delete"
                    } else {
                        "deleted"
                    };
                    for b in &report.blobs {
                        println!("blob {b}");
                    }
                    for m in &report.manifests {
                        println!("manifest {}@{}", m.repository, m.digest);
                    }
                    for u in &report.uploads {
                        println!("upload {}/{}", u.repository, u.id);
                    }
                    for t in &report.tags {
                        println!("tag {}:{} ({})", t.repository, t.tag, t.digest);
                    }
                    println!(
                        "{verb} {} tags, {} blobs ({} bytes), {} manifest revisions, {} links, {} uploads; \
                         {} of {} blobs live, {} spared",
                        report.tags.len(),
                        report.blobs.len(),
                        report.bytes,
                        report.manifests.len(),
                        report.links,
                        report.uploads.len(),
                        report.blobs_live,
                        report.blobs_seen,
                        report.spared
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berth-registry: gc in {root}: {e}");
                ExitCode::FAILURE
            }
        }
    })
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
    if let Some(Command::Gc {
        dry_run,
        delete_untagged,
        json,
        grace,
    }) = cli.command
    {
        let mut opts = berth_registry::gc_options(&config);
        opts.dry_run = dry_run;
        opts.delete_untagged |= delete_untagged;
        if let Some(g) = grace {
            opts.grace = g;
        }
        return run_gc(config, opts, json);
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
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
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
        let debug = match app.config.debug_addr() {
            Some(Ok(addr)) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("berth-registry: cannot listen on {addr} (http.debug.addr): {e}");
                    return ExitCode::FAILURE;
                }
            },
            _ => None,
        };
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(listen = %local, storage = %root, "berth-registry listening");
        // Scripts and tests read these lines to learn the bound ports (a reader that went away is no error).
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "berth-registry listening on {local}");
            if let Some(d) = &debug {
                let addr = d.local_addr().map(|a| a.to_string()).unwrap_or_default();
                let prom = &app.config.http.debug.prometheus;
                let metrics = if prom.enabled { prom.path.as_str() } else { "" };
                tracing::info!(debug = %addr, "debug listener: {} {metrics}", berth_registry::health::HEALTH_PATH);
                let _ = writeln!(out, "berth-registry debug on {addr}");
            }
            let _ = out.flush();
        }
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        if let Err(e) = berth_registry::start_notifications(&app, port).await {
            eprintln!("berth-registry: notifications: cannot open the spool: {e}");
            return ExitCode::FAILURE;
        }
        if let Some(d) = debug {
            let health = berth_registry::health::Health::spawn(&app);
            tokio::spawn(berth_registry::health::serve_debug(
                d,
                health,
                Arc::clone(&app),
                std::future::pending(),
            ));
        }
        if app.config.http.debug.prometheus.enabled {
            berth_registry::spawn_census(&app);
        }
        match app.store.storage().space().await {
            Ok(Some(sp)) => tracing::info!(
                free = %berth_registry::storage::human_bytes(sp.available),
                reserve = %berth_registry::storage::human_bytes(sp.reserve),
                "free space (uploads are refused below the reserve)"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the free space"),
        }
        match (
            app.config.storage.cache_limits(),
            app.config.storage.cache_in_redis(),
        ) {
            (None, _) => tracing::info!("metadata cache off"),
            (Some(l), false) => {
                tracing::info!(ttl = ?l.ttl, max_entries = l.max_entries, max_bytes = l.max_bytes, "metadata cache in memory")
            }
            (Some(l), true) => tracing::info!(
                redis = %app.config.redis.addr,
                max_entries = l.max_entries,
                max_bytes = l.max_bytes,
                "metadata cache in redis (content-addressed entries also in memory)"
            ),
        }
        for m in app.mirrors.iter().flat_map(|m| m.list()) {
            if m.prefix.is_empty() {
                tracing::info!(remote = %m.url(), ttl = ?m.ttl, namespace = %m.namespace, "pull-through cache of the remote: pushes are refused");
            } else {
                tracing::info!(prefix = %m.prefix, remote = %m.url(), ttl = ?m.ttl, namespace = %m.namespace, "mirror");
            }
        }
        let collector = berth_registry::spawn_collector(&app);
        server::serve(listener, app, shutdown_signal()).await;
        if let Some(c) = collector {
            c.stop().await;
        }
        tracing::info!("berth-registry stopped");
        ExitCode::SUCCESS
    })
}
