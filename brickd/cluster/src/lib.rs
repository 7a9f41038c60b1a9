//! Cluster state behind the `ClusterStore` trait: the embedded single-node store and etcd for
//! multi-node clusters. Also the management request vocabulary shared by CLI and daemon.

pub mod etcd;
pub mod mgmt;
pub mod model;
pub mod store;

pub use etcd::EtcdStore;
pub use model::*;
pub use store::{ClusterStore, EmbeddedStore, StoreError, TxnOp};
