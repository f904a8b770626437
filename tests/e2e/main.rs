//! End-to-end tests: a real origin on loopback, real `fresco` processes,
//! requests over sockets. One binary so the suite links once.

mod harness;

mod cdc;
mod cluster;
mod http_caching;
mod invalidation;
mod log_durability;
mod model;
mod nginx_origin;
mod poisoning;
mod proxying;
mod security;
mod stampede;
mod store;
mod trust;
