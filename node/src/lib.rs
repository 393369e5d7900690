//! The dcloud node: the sans-IO replication [`engine`], and around it the real
//! world: the libp2p driver ([`net`], [`links`], [`dial`], [`daemon`]), the sled [`store`], applying
//! policy to the site ([`apply`]), the local HTTP [`api`] and its JSON shapes
//! ([`view`]), [`metrics`], configuration ([`config`]) and the site-side query
//! commands ([`cli`]).

pub mod admin;
pub mod api;
pub mod apply;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dial;
pub mod engine;
pub mod freshness;
pub mod links;
pub mod metrics;
pub mod net;
pub mod store;
pub mod trustfile;
pub mod view;
