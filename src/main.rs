//! The `rejoin` command.
#![forbid(unsafe_code)]

fn main() {
    println!("rejoin {}", env!("CARGO_PKG_VERSION"));
}
