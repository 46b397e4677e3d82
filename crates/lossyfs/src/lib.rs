//! lossyfs: a FUSE file system for power-loss tests, in the spirit of LazyFS.
//!
//! It passes every operation through to a backing directory, except file data: what is
//! written stays in the daemon's memory (a per-file [`overlay::Overlay`] of dirty byte
//! ranges and the pending length) until the file is fsynced. Killing the daemon with
//! SIGKILL is a power cut: every write that was not fsynced is gone, every write that was
//! is in the backing directory. See [`fs`] for what is and is not modelled.

pub mod fs;
pub mod overlay;
