//! failover-ctl library: loader, map writer and pure control logic shared by the daemon, xtask and tests.
pub mod address;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod election;
pub mod grace;
pub mod sys;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod netlink;
pub mod objects;
pub mod paths;
pub mod pin;
pub mod probe;
pub mod table_pool;
