//! The commands that are not the daemon: those that talk to a running node over the admin
//! socket ([`commands`]: import, pull, status, pin, unpin, gc, verify) and `shoal configure`
//! ([`mirror_config`]), which writes container runtimes' mirror configuration without any node
//! running, and `shoal user` ([`users`]), which edits the gateway's htpasswd file. The argument parser itself is in `lib.rs`.

pub mod commands;
pub mod mirror_config;
pub mod users;
