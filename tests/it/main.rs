//! Integration tests: the real `release` binary against real git, Python,
//! pip/uv, tar archives and (for the host side) real processes.

mod bakery;
mod build;
mod cli;
mod common;
mod delta;
mod demo;
mod dry_run;
mod faults;
mod fleet;
mod fresh_host;
mod host;
mod hostile;
mod locks;
mod reload;
mod statics;
mod store;
