//! The Cairn broker. (Implementation in progress.)

pub mod cli;
