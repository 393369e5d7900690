//! The dcloud node: the sans-IO replication [`engine`], and around it the real
//! world: the libp2p driver ([`net`], [`links`], [`dial`], [`daemon`]), the sled [`store`], applying
//! policy to the site ([`apply`]), the local HTTP [`api`] and its JSON shapes
//! ([`view`]), [`metrics`], configuration ([`config`]) and the site-side query
//! commands ([`cli`]).
//!
//! Everything but the engine and its pure views ([`engine`], [`view`],
//! [`freshness`]) is behind the default `daemon` feature, so that the engine
//! builds, and the simulator runs it, without libp2p, tokio or sled.

#[cfg(feature = "daemon")]
pub mod admin;
#[cfg(feature = "daemon")]
pub mod api;
#[cfg(feature = "daemon")]
pub mod apply;
#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod dial;
pub mod engine;
pub mod freshness;
#[cfg(feature = "daemon")]
pub mod links;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod net;
#[cfg(feature = "daemon")]
pub mod store;
#[cfg(feature = "daemon")]
pub mod trustfile;
pub mod view;
