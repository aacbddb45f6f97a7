//! Toolhub's read side: the read models built from the event log, the
//! checkpointed projector runner that maintains them, and the read queries the
//! API serves from them.
//!
//! Every read model here can be rebuilt from the log alone. This crate never
//! appends to the log and never decides whether a command is allowed.
