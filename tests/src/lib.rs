//! Support code shared by the integration tests: a real local control plane
//! (etcd + kube-apiserver), the Machine Config Operator simulator, and fake
//! host roots for the node-agent's probes.

pub mod host_root;
