//! End-to-end tests: the real `switchboard` binary as separate processes on 127.0.0.1,
//! driven over the Web API, RTM and Socket Mode WebSockets, and the mesh. One test binary with
//! a module per area, so the harness ([`common`]) is compiled and linked once rather than once
//! per file. Run one area with `cargo test --test e2e <module>::`.

mod common;

mod api;
mod bad_input;
mod conversations;
mod cql;
mod delivery;
mod dev;
mod drain;
mod events_api;
mod failover;
mod flannel;
mod health;
mod hooks;
mod membership_resync;
mod message_changes;
mod presence;
mod resume;
mod shutdown;
mod slow_consumer;
mod socket_mode;
