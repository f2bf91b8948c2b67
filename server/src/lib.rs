//! Goodhart's application crate: the `goodhart` command line and (to come) the web server.

pub mod cli;
