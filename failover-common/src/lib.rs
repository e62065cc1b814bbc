//! Types and pure functions shared by the XDP programs and the controller (`#![no_std]`).
//!
//! Everything that crosses the kernel/user boundary is defined here exactly once: map keys and
//! values (`maps`), counter indexes (`stats`), the packet monitor's filter and records
//! (`monitor`), and the functions both sides must compute identically: the flow hash (`hash`)
//! and Internet checksums (`csum`).
#![no_std]

pub mod csum;
pub mod hash;
pub mod maps;
pub mod monitor;
pub mod stats;
