//! spin-registry-proxy: the OCI Distribution API of one upstream registry on a custom domain.
//!
//! Everything but `spin_adapter` is plain Rust over `http` types, tested on the host.

pub mod challenge;
pub mod config;
pub mod error;
pub mod exchange;
pub mod headers;
pub mod home;
pub mod link;
pub mod listing;
pub mod log;
pub mod names;
pub mod origin;
pub mod public_url;
pub mod reply;
pub mod route;
pub mod scope;
#[cfg(any(test, feature = "simulate"))]
pub mod simulate;
pub mod token;
pub mod upstream_error;
pub mod upstream_failure;

#[cfg(target_arch = "wasm32")]
mod spin_adapter;
