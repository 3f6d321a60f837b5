//! The command line: `serve` (default), `check-config`, `ca init|issue`, `user add|remove|list`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::ca::{self, KeyType};
use crate::config::{Config, EnvSource, ProcessEnv};

/// berth's TLS front door for a private registry: HTTPS with a generated dev CA, htpasswd authentication,
/// user-agent rules, and streaming forwarding to berth-registry (or registry:2).
#[derive(Debug, Parser)]
#[command(name = "berth-proxy", version, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file (default: none; BERTH_* environment variables override it).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "BERTH_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTPS, generating the dev CA and server certificate first if they are missing.
    Serve,
    /// Load and validate the configuration (and the access file, when one is set), print every problem with
    /// its key (or file and line), exit 1 on error.
    CheckConfig,
    /// Manage the development certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Manage the users of the htpasswd file.
    #[command(subcommand)]
    User(UserCommand),
}

/// Names and addresses for a server certificate.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// DNS name for the server certificate (repeatable; default: BERTH_TLS_HOSTS or hostname, localhost,
    /// 127.0.0.1).
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// IP address for the server certificate (repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    pub ips: Vec<std::net::IpAddr>,
    /// Directory for the CA and certificates (default: the config's certs_dir, BERTH_CERTS_DIR, `certs`).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Key type for the generated keys.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
}

/// `ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create devdockerCA.key/.crt (about 10 years) and issue domain.key/.crt (397 days) signed by it. The CA
    /// carries name constraints: it can vouch only for the given names and addresses, localhost and loopback.
    Init {
        #[command(flatten)]
        hosts: HostArgs,
        /// Replace an existing CA (every client trusting the old one must trust the new one).
        #[arg(long)]
        force: bool,
    },
    /// Issue a new domain.key/.crt from the existing CA (renewal, or names within its name constraints).
    Issue {
        #[command(flatten)]
        hosts: HostArgs,
    },
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user, or change the password of an existing one (bcrypt, `$2y$`).
    Add {
        /// User name.
        name: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// bcrypt cost (4 to 17).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=17))]
        cost: u32,
        /// htpasswd file (default: the config's htpasswd, BERTH_HTPASSWD, `auth/htpasswd`).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Remove a user.
    Remove {
        /// User name.
        name: String,
        /// htpasswd file.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// List the users.
    List {
        /// htpasswd file.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// Parse the process arguments and run.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    run(cli, &ProcessEnv)
}

/// Load the configuration without failing on validation (for commands that need only a path from it).
fn lenient_config(file: Option<&Path>, env: &dyn EnvSource) -> Result<Config, String> {
    let mut config = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Config::default(),
    };
    let _ = config.apply_env(env);
    Ok(config)
}

/// Run a parsed command line.
pub fn run(cli: Cli, env: &dyn EnvSource) -> ExitCode {
    let config_file = cli.config.as_deref();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config_file, env),
        Command::CheckConfig => match Config::load(config_file, env) {
            Ok(c) => {
                if let Some(acl) = &c.acl {
                    match crate::authz::load_rules(acl) {
                        Ok(rules) => println!(
                            "access rules OK: {} rules in {}",
                            rules.len(),
                            acl.display()
                        ),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                println!("configuration OK");
                println!("{}", toml::to_string_pretty(&c).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                for p in &e.0 {
                    eprintln!("error: {p}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Ca(cmd) => {
            let config = match lenient_config(config_file, env) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let (hosts, force, init) = match cmd {
                CaCommand::Init { hosts, force } => (hosts, force, true),
                CaCommand::Issue { hosts } => (hosts, false, false),
            };
            let dir = hosts
                .dir
                .clone()
                .unwrap_or_else(|| config.certs_dir.clone());
            let mut names: Vec<String> = hosts.hosts.clone();
            names.extend(hosts.ips.iter().map(|i| i.to_string()));
            if names.is_empty() {
                names = config.effective_tls_hosts();
            }
            let result = if init {
                ca::init(&dir, &names, hosts.key_type, force)
            } else {
                ca::issue(&dir, &names, hosts.key_type)
            };
            match result {
                Ok(issued) => {
                    println!("CA certificate:     {}", issued.ca_cert.display());
                    match ca::ca_constraints(&dir) {
                        Ok(Some(permitted)) => {
                            println!("CA vouches only for: {}", permitted.join(", "))
                        }
                        Ok(None) => println!(
                            "CA vouches for:     any name (no name constraints; `ca init --force` makes a \
                             constrained one)"
                        ),
                        Err(e) => println!("CA constraints:     unreadable ({e})"),
                    }
                    println!("server certificate: {}", issued.server_cert.display());
                    println!("server key:         {}", issued.server_key.display());
                    println!("names:              {}", issued.names.join(", "));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::User(cmd) => {
            let config = match lenient_config(config_file, env) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            user(cmd, &config)
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn read_password(from_stdin: bool) -> Result<String, String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        return Ok(pw);
    }
    let first = rpassword::prompt_password("New password: ").map_err(|e| e.to_string())?;
    let second = rpassword::prompt_password("Re-type new password: ").map_err(|e| e.to_string())?;
    if first != second {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

fn user(cmd: UserCommand, config: &Config) -> ExitCode {
    let file_of = |f: Option<PathBuf>| f.unwrap_or_else(|| config.htpasswd.clone());
    match cmd {
        UserCommand::Add {
            name,
            password_stdin,
            cost,
            file,
        } => {
            let file = file_of(file);
            if let Err(e) = crate::users::check_name(&name) {
                return fail(&e.to_string());
            }
            let password = match read_password(password_stdin) {
                Ok(p) => p,
                Err(e) => return fail(&e),
            };
            if password.is_empty() {
                return fail("empty password");
            }
            let hash = match crate::authn::bcrypt_hash(&password, cost) {
                Ok(h) => h,
                Err(e) => return fail(&e),
            };
            match crate::users::set_user(&file, &name, &hash) {
                Ok(true) => {
                    println!("added user {name} to {}", file.display());
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    println!("updated password of {name} in {}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        UserCommand::Remove { name, file } => {
            let file = file_of(file);
            match crate::users::remove_user(&file, &name) {
                Ok(()) => {
                    println!("removed user {name} from {}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        UserCommand::List { file } => match crate::users::list_users(&file_of(file)) {
            Ok(users) => {
                for u in users {
                    println!("{u}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
    }
}

fn serve(config_file: Option<&Path>, env: &dyn EnvSource) -> ExitCode {
    let config = match Config::load(config_file, env) {
        Ok(c) => c,
        Err(e) => {
            for p in &e.0 {
                eprintln!("error: {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    crate::log::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(serve_async(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(&e)
        }
    }
}

async fn serve_async(config: Config) -> Result<(), String> {
    let addr = config.listen_addr().map_err(|e| e.to_string())?;
    let source = tokio::task::spawn_blocking({
        let config = config.clone();
        move || crate::tls::ensure_server_cert(&config)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if let crate::tls::CertSource::Generated { ca_cert, new_ca } = &source {
        let hostport = config.public_addr.clone().unwrap_or_else(|| {
            let host = config
                .effective_tls_hosts()
                .into_iter()
                .next()
                .unwrap_or_else(|| "localhost".into());
            format!("{host}:{}", addr.port())
        });
        let shown_ca = match &config.public_certs_dir {
            Some(dir) => dir.join("devdockerCA.crt"),
            None => ca_cert.clone(),
        };
        tracing::info!(
            "generated a server certificate{} signed by the dev CA {}",
            if *new_ca { " and a new dev CA" } else { "" },
            shown_ca.display()
        );
        tracing::info!(
            "to trust it on a client run: scripts/install-ca.sh {hostport} {}  then: docker login {hostport}",
            shown_ca.display()
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // Loading the certificate and the htpasswd file (and hashing the dummy password) blocks: not on a runtime
    // thread.
    let mut server =
        tokio::task::spawn_blocking(move || crate::server::Server::new(config, listener))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let local = server.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("listening on {local}");
    match server.bind_metrics().await {
        Ok(Some(m)) => tracing::info!("metrics on http://{m}{}", crate::metrics::METRICS_PATH),
        Ok(None) => {}
        Err(e) => {
            return Err(format!(
                "metrics_listen (BERTH_METRICS_LISTEN): cannot listen: {e}"
            ))
        }
    }
    let cert = server.cert();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let c = Arc::clone(&cert);
            match tokio::task::spawn_blocking(move || c.reload()).await {
                Ok(Ok(())) => tracing::info!("SIGHUP: certificate reloaded"),
                Ok(Err(e)) => {
                    tracing::error!("SIGHUP: certificate reload failed, keeping the old one: {e}")
                }
                Err(e) => tracing::error!("SIGHUP: certificate reload task failed: {e}"),
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    server.run(shutdown).await.map_err(|e| e.to_string())?;
    // Let the access log of the last requests reach stderr.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
