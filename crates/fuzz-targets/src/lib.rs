//! The fuzz targets' bodies, one module per target, each with `run(data)`.
//!
//! `fuzz/` (cargo-fuzz, nightly) wraps each in `fuzz_target!`; `tests/replay.rs` runs
//! every input of the seed corpora (`fuzz/seeds/TARGET/`) through the same function on
//! stable, so CI replays them as ordinary tests.
pub mod agent_frames;
pub mod base64_field;
pub mod cli_forms;
pub mod dockerfile;
pub mod http_api;
pub mod image_inputs;
pub mod mmio_registers;
pub mod pod_spec;
pub mod registry_manifest;
pub mod unpack_layer;
pub mod virtio_blk;
pub mod virtio_console;
pub mod virtio_net;

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/Cargo.toml` and `fuzz/seeds/` name them.
pub static TARGETS: &[(&str, Target)] = &[
    ("agent_frames", agent_frames::run),
    ("base64_field", base64_field::run),
    ("cli_forms", cli_forms::run),
    ("dockerfile", dockerfile::run),
    ("http_api", http_api::run),
    ("image_inputs", image_inputs::run),
    ("mmio_registers", mmio_registers::run),
    ("pod_spec", pod_spec::run),
    ("registry_manifest", registry_manifest::run),
    ("unpack_layer", unpack_layer::run),
    ("virtio_blk", virtio_blk::run),
    ("virtio_console", virtio_console::run),
    ("virtio_net", virtio_net::run),
];
