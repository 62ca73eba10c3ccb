//! Operations: host checks against `tuning/` (and, later, metrics, health and the dashboard).
//!
//! Nothing here sits on the hot path, and nothing here uses `unsafe`: host facts are read from
//! `/proc` files, which a test can replace with a fake root.

pub mod doctor;
