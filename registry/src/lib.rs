//! berth-registry: an OCI Distribution v1.1 registry over registry:2's storage layout.
//!
//! [`App`] handles requests; [`server::serve`] runs it on a listener. Tests build both in-process, and also
//! start the real binary.

pub mod api;
pub mod config;
pub mod error;
pub mod linger;
pub mod oci;
pub mod paths;
pub mod ranges;
pub mod server;
pub mod storage;
pub mod store;

use std::sync::Arc;

pub use api::App;
pub use config::Config;

/// Builds the application for a configuration: opens the storage and the store over it.
pub fn build(config: Config) -> std::io::Result<Arc<App>> {
    let storage: Arc<dyn storage::Storage> = match config.storage.driver {
        config::StorageDriver::Filesystem => {
            Arc::new(storage::fs::FsStorage::new(&config.storage.root_directory)?)
        }
        config::StorageDriver::S3 => Arc::new(
            storage::s3::S3Storage::new(&config.storage.s3.options())
                .map_err(std::io::Error::other)?,
        ),
    };
    Ok(Arc::new(App {
        store: store::RegistryStore::new(storage),
        config,
    }))
}
