//! berth-proxy: the TLS front door of a berth registry. It terminates HTTPS (with a generated development CA
//! when no certificate is given), refuses unsupported clients, authenticates against an htpasswd file through a
//! verified-credential cache, and streams requests and responses to the registry behind it.
//!
//! Tests build a [`server::Server`] from a [`config::Config`] on `127.0.0.1:0` and run it in-process.

pub mod audit;
pub mod authn;
pub mod authz;
pub mod ca;
pub mod cli;
pub mod config;
pub mod error;
pub mod filter;
pub mod forward;
pub mod log;
pub mod metrics;
pub mod readahead;
pub mod server;
pub mod tls;
pub mod ui;
pub mod upstream;
pub mod users;
pub mod watch;
