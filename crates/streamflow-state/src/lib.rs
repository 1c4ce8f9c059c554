//! StreamFlow state: how keyed state is divided into key groups, and how
//! operator state is laid out in a snapshot.
//!
//! Keyed edges route a row to the instance owning the key group of its key
//! ([`key_groups`]); operators tag the state of each key with the same key
//! group when they snapshot ([`put_keyed`]), so a checkpoint taken at one
//! parallelism can be restored at another. [`CheckpointStore`] persists
//! checkpoints: state files and metadata in a directory or an object store
//! (S3, GCS, Azure, NATS JetStream).

pub mod key_group;
mod objects;
pub mod store;

pub use key_group::{
    MAX_KEY_GROUPS, instance_for_key_group, key_group, key_group_range, key_groups, put_keyed,
};
pub use store::{
    BlobRef, CheckpointMeta, CheckpointStore, InstanceState, NodeInfo, SourcePosition, StateFiles,
};
