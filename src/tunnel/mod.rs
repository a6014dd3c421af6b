//! The reverse tunnel: services behind NAT published on a public server, over
//! one resumable stream per client, always in the sealed suite.

pub mod auth;
pub(crate) mod bridge;
pub mod client;
pub mod frame;
pub mod mux;
pub(crate) mod pool;
pub mod server;
pub(crate) mod traffic;
pub mod udp;

pub use traffic::ServiceStats;
