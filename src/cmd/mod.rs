//! The subcommands of the `rejoin` binary.

pub mod demo;
