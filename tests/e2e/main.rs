//! End-to-end tests: a real origin on loopback, real `fresco` processes,
//! requests over sockets. One binary so the suite links once.

mod harness;

mod audit;
mod cdc;
mod cluster;
mod dashboard;
mod diagnose;
mod disk;
mod http_caching;
mod invalidation;
mod layers;
mod log_durability;
mod model;
mod nginx_origin;
mod observability;
mod poisoning;
mod proxying;
mod ranges;
mod security;
mod stampede;
mod store;
mod trust;
mod warm;
