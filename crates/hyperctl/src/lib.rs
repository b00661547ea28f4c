//! hyperd's client side: [`client`], the typed client of hyperd's API over its Unix
//! socket (answers are `hyperd_api`'s models), used by the `hyperctl` binary and by
//! anyone driving hyperd from Rust.
pub mod client;
