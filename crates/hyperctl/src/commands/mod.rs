//! hyperctl's commands, one module per group: [`pods`], [`containers`], [`images`],
//! [`system`]; [`terminal`] is the terminal side of attach, exec and run.
pub mod containers;
pub mod images;
pub mod pods;
pub mod system;
pub mod terminal;
