//! Cluster state behind the `ClusterStore` trait: the embedded single-node store and etcd for
//! multi-node clusters. Also the management requests and replies shared by the daemon and every
//! caller (`mgmt`), and the documents the CLI prints (`report`).

pub mod etcd;
pub mod mgmt;
pub mod model;
pub mod placement;
pub mod report;
pub mod store;

pub use etcd::EtcdStore;
pub use model::*;
pub use store::{ClusterStore, EmbeddedStore, StoreError, TxnOp};
