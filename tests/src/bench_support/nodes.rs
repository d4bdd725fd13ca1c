//! The Node objects the scale benchmarks create (`NODE_SHAPE`).
//!
//! What the coordinator holds per node, and what every watch event and list
//! page costs it, grows with the size of the Node object: an OpenShift
//! worker's is some 16 KiB (labels, the MCO's and OVN-Kubernetes's
//! annotations, capacity, nodeInfo, the images the kubelet reports), a
//! bench's bare one 0.2 KiB. The realistic shape is the default; the bare
//! one keeps earlier figures comparable.

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use super::BoxError;

/// An OpenShift 4.16 worker on AWS as `oc get node -o json` shows it, less
/// `managedFields` (the API server writes its own); see
/// `tests/fixtures/nodes/README.md` for where its shape comes from.
const OPENSHIFT_WORKER: &str = include_str!("../../fixtures/nodes/openshift-worker.json");

/// The MCO's annotations of a node's configuration and the daemon's state,
/// which the MCO simulator writes itself when it adopts a node.
const ROLLOUT_ANNOTATIONS: [&str; 4] = [
    "machineconfiguration.openshift.io/currentConfig",
    "machineconfiguration.openshift.io/desiredConfig",
    "machineconfiguration.openshift.io/state",
    "machineconfiguration.openshift.io/reason",
];

/// Host addresses of the fixture's machine network, 10.0.0.0/19: the
/// first ten are the gateway's and the cloud's.
const FIRST_HOST: u32 = 10;
const MACHINE_NETWORK_HOSTS: u32 = (1 << 13) - 2;

/// How a bench's Nodes look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeShape {
    /// A name and the worker role label: what the benchmarks created
    /// before 2026-12-07.
    Bare,
    /// `tests/fixtures/nodes/openshift-worker.json`, with what differs
    /// from node to node (name, addresses, subnets, ids) made distinct.
    OpenShift,
}

impl NodeShape {
    /// `NODE_SHAPE=bare|openshift`, `openshift` when unset.
    pub fn from_env() -> Result<Self, BoxError> {
        match std::env::var("NODE_SHAPE").as_deref() {
            Err(_) | Ok("openshift") => Ok(Self::OpenShift),
            Ok("bare") => Ok(Self::Bare),
            Ok(other) => Err(format!("NODE_SHAPE={other}: expected bare or openshift").into()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::OpenShift => "openshift",
        }
    }

    /// The `index`th worker of a bench, named `name`; distinct indexes give
    /// distinct addresses, subnets and ids.
    pub fn node(self, index: usize, name: &str) -> Result<Node, BoxError> {
        let object = match self {
            Self::Bare => json!({"metadata": {
                "name": name,
                "labels": {kata_coordinator::names::WORKER_ROLE_LABEL: ""},
            }}),
            Self::OpenShift => openshift_worker(index, name)?,
        };
        Ok(serde_json::from_value(object)?)
    }
}

/// The node as it is before the MCO adopts it: without the annotations of
/// its configuration and state, which the MCO simulator then writes for the
/// configuration it rendered (the fixture's would be a config it never
/// rendered, and roll every node before the bench begins).
pub fn unadopted(mut node: Node) -> Node {
    if let Some(annotations) = node.metadata.annotations.as_mut() {
        for key in ROLLOUT_ANNOTATIONS {
            annotations.remove(key);
        }
    }
    node
}

fn fixture() -> Result<&'static Value, BoxError> {
    static PARSED: OnceLock<Result<Value, String>> = OnceLock::new();
    PARSED
        .get_or_init(|| serde_json::from_str(OPENSHIFT_WORKER).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| format!("tests/fixtures/nodes/openshift-worker.json: {e}").into())
}

/// What differs from one worker to the next, derived from its index.
struct Identity<'a> {
    name: &'a str,
    ip: Ipv4Addr,
    /// Its pod subnet (OVN's `node-subnets`), a /23 of 10.128.0.0/10.
    pod_subnet: Ipv4Addr,
    /// OVN's node id, which also numbers its join and transit addresses.
    ovn_id: u32,
    instance: String,
    /// For the chassis id, MAC addresses and the machine's UUIDs.
    tag: u64,
}

impl<'a> Identity<'a> {
    fn new(index: usize, name: &'a str) -> Result<Self, BoxError> {
        let index = u32::try_from(index)?;
        if index >= MACHINE_NETWORK_HOSTS - FIRST_HOST {
            return Err(format!("worker {index}: more workers than 10.0.0.0/19 holds").into());
        }
        let tag = 0x5eed_0000_0000 + u64::from(index);
        Ok(Self {
            name,
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + FIRST_HOST + index),
            pod_subnet: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (index << 9)),
            ovn_id: index + 2,
            instance: format!("i-0{tag:016x}"),
            tag,
        })
    }

    fn mac(&self, prefix: u8) -> String {
        let bytes = self.tag.to_be_bytes();
        format!(
            "{prefix:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]
        )
    }

    fn ovn_address(&self, network: [u8; 2]) -> String {
        let [high, low] = u16::try_from(self.ovn_id).unwrap_or(u16::MAX).to_be_bytes();
        format!("{}.{}.{high}.{low}/16", network[0], network[1])
    }

    /// The annotations OVN-Kubernetes, the cloud and the machine API write
    /// per node, as the fixture has them.
    fn annotations(&self) -> Vec<(&'static str, String)> {
        let ip = self.ip;
        let cidr = format!("{ip}/19");
        let gateway = json!({"default": {
            "mode": "shared", "bridge-id": "br-ex", "interface-id": format!("br-ex_{}", self.name),
            "mac-address": self.mac(0x0a), "ip-addresses": [cidr], "ip-address": cidr,
            "next-hops": ["10.0.0.1"], "next-hop": "10.0.0.1", "node-port-enable": "true", "vlan-id": "0",
        }});
        vec![
            ("alpha.kubernetes.io/provided-node-ip", ip.to_string()),
            (
                "csi.volume.kubernetes.io/nodeid",
                json!({"ebs.csi.aws.com": self.instance}).to_string(),
            ),
            ("k8s.ovn.org/host-cidrs", json!([cidr]).to_string()),
            ("k8s.ovn.org/l3-gateway-config", gateway.to_string()),
            (
                "k8s.ovn.org/node-chassis-id",
                format!("4f0c2a9e-7b1d-4c3e-9a85-{:012x}", self.tag),
            ),
            (
                "k8s.ovn.org/node-encap-ips",
                json!([ip.to_string()]).to_string(),
            ),
            (
                "k8s.ovn.org/node-gateway-router-lrp-ifaddrs",
                json!({"default": {"ipv4": self.ovn_address([100, 64])}}).to_string(),
            ),
            ("k8s.ovn.org/node-id", self.ovn_id.to_string()),
            (
                "k8s.ovn.org/node-mgmt-port-mac-addresses",
                json!({"default": self.mac(0x7a)}).to_string(),
            ),
            (
                "k8s.ovn.org/node-primary-ifaddr",
                json!({"ipv4": cidr}).to_string(),
            ),
            (
                "k8s.ovn.org/node-subnets",
                json!({"default": [format!("{}/23", self.pod_subnet)]}).to_string(),
            ),
            (
                "k8s.ovn.org/node-transit-switch-port-ifaddr",
                json!({"ipv4": self.ovn_address([100, 88])}).to_string(),
            ),
            ("k8s.ovn.org/remote-zone-migrated", self.name.to_owned()),
            ("k8s.ovn.org/zone-name", self.name.to_owned()),
            (
                "machine.openshift.io/machine",
                format!("openshift-machine-api/prod-x7k2p-{}", self.name),
            ),
        ]
    }
}

fn openshift_worker(index: usize, name: &str) -> Result<Value, BoxError> {
    let id = Identity::new(index, name)?;
    let mut node = fixture()?.clone();
    node["metadata"]["name"] = json!(name);
    node["metadata"]["labels"]["kubernetes.io/hostname"] = json!(name);
    for (key, value) in id.annotations() {
        node["metadata"]["annotations"][key] = json!(value);
    }
    node["spec"]["providerID"] = json!(format!("aws:///us-east-1a/{}", id.instance));
    let status = &mut node["status"];
    status["addresses"] = json!([
        {"type": "InternalIP", "address": id.ip.to_string()},
        {"type": "Hostname", "address": name},
        {"type": "InternalDNS", "address": name},
    ]);
    let machine = format!("{:032x}", u128::from(id.tag) << 32 | 0x9a4c_4e1f);
    let info = &mut status["nodeInfo"];
    info["bootID"] = json!(uuid(&format!("{:032x}", u128::from(id.tag) << 64 | 0x2c3d)));
    info["machineID"] = json!(machine);
    info["systemUUID"] = json!(uuid(&machine));
    Ok(node)
}

/// 32 hex digits in the 8-4-4-4-12 form.
fn uuid(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn size(node: &Node) -> usize {
        serde_json::to_vec(node)
            .map(|v| v.len())
            .unwrap_or_default()
    }

    #[test]
    fn openshift_workers_are_as_large_as_a_real_one_and_differ_where_real_ones_do() {
        let nodes: Vec<Node> = (0..2000)
            .map(|i| NodeShape::OpenShift.node(i, &format!("worker-{i:05}")))
            .collect::<Result<_, _>>()
            .expect("the fixture builds");
        let first = &nodes[0];
        assert!(
            (15_000..18_000).contains(&size(first)),
            "{} bytes",
            size(first)
        );
        assert_eq!(first.metadata.labels.as_ref().map(|l| l.len()), Some(41));
        let images = first.status.as_ref().and_then(|s| s.images.as_ref());
        assert_eq!(images.map(Vec::len), Some(50));
        let distinct = |key: &str| -> usize {
            nodes
                .iter()
                .filter_map(|n| n.metadata.annotations.as_ref()?.get(key).cloned())
                .collect::<BTreeSet<_>>()
                .len()
        };
        for key in [
            "k8s.ovn.org/node-subnets",
            "k8s.ovn.org/node-primary-ifaddr",
            "k8s.ovn.org/node-chassis-id",
            "k8s.ovn.org/l3-gateway-config",
            "k8s.ovn.org/node-transit-switch-port-ifaddr",
        ] {
            assert_eq!(distinct(key), nodes.len(), "{key}");
        }
        let hostnames: BTreeSet<_> = nodes
            .iter()
            .filter_map(|n| n.metadata.labels.as_ref()?.get("kubernetes.io/hostname"))
            .collect();
        assert_eq!(hostnames.len(), nodes.len());
        assert!(NodeShape::OpenShift.node(9000, "too-many").is_err());
    }

    #[test]
    fn a_bare_worker_carries_the_role_and_an_unadopted_one_no_rollout_state() {
        let bare = NodeShape::Bare.node(0, "w").expect("builds");
        assert!(size(&bare) < 200);
        let role = kata_coordinator::names::WORKER_ROLE_LABEL;
        assert!(bare.metadata.labels.is_some_and(|l| l.contains_key(role)));
        let node = unadopted(NodeShape::OpenShift.node(0, "w").expect("builds"));
        let annotations = node.metadata.annotations.unwrap_or_default();
        assert!(
            ROLLOUT_ANNOTATIONS
                .iter()
                .all(|k| !annotations.contains_key(*k))
        );
        assert!(annotations.contains_key("machineconfiguration.openshift.io/desiredDrain"));
    }
}
