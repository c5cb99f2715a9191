//! Real servers on loopback for the tests and the demo.
//!
//! Nothing here is a mock: each module starts the genuine program and waits
//! until it answers. Every process is stopped when its guard is dropped.

pub mod controlplane;
pub mod moto;
pub mod oauth_server;
pub mod operator;
pub mod process;
