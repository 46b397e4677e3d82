//! Black-box tests of backups, verify, restore and storage health.

mod common;
