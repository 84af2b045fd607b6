//! spin-registry-proxy: the OCI Distribution API of upstream registries on a custom domain.
//!
//! Everything but `spin_adapter` is plain Rust over `http` types, tested on the host.

pub mod anonymous_token;
pub mod base64;
pub mod cache;
pub mod challenge;
pub mod civil_time;
pub mod config;
pub mod config_error;
pub mod create_lock;
pub mod digest;
pub mod endpoint;
pub mod error;
pub mod exchange;
pub mod headers;
pub mod home;
pub mod instance_allocator;
pub mod link;
pub mod listing;
pub mod log;
pub mod names;
pub mod origin;
pub mod password;
pub mod presets;
pub mod proxy_token;
pub mod public_url;
pub mod pull_stats;
pub mod reply;
pub mod repository_pattern;
pub mod routes;
pub mod scope;
#[cfg(any(test, feature = "simulate"))]
pub mod simulate;
pub mod store_secret;
pub mod target;
pub mod token;
pub mod upstream_error;
pub mod upstream_failure;
pub mod upstream_token;
pub mod users;

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: instance_allocator::Arena = instance_allocator::Arena::new(std::alloc::System);

#[cfg(target_arch = "wasm32")]
mod spin_adapter;
