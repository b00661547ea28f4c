//! hyperctl's commands, one module per group: [`pods`], [`containers`], [`images`],
//! [`build`], [`system`]; [`terminal`] is the terminal side of attach, exec and run.
pub(crate) mod build;
pub(crate) mod containers;
pub(crate) mod images;
pub(crate) mod pods;
pub(crate) mod system;
pub(crate) mod terminal;
