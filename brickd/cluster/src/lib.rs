//! Cluster state behind the `ClusterStore` trait: the embedded single-node store first, etcd
//! next (multi-node issue). Also the management request vocabulary shared by CLI and daemon.

pub mod mgmt;
pub mod model;
pub mod store;

pub use model::*;
pub use store::{ClusterStore, EmbeddedStore, StoreError, TxnOp};
