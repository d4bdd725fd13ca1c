//! The cri-handler probe against the shapes of CRI-O's `RuntimeService/Status`
//! reply across versions, served by a real tonic CRI server on a unix socket
//! at the fake host root's `run/crio/crio.sock`, and asked through the agent's
//! own gRPC client path ([`kata_node_agent::probe::cri::probe`]).
//!
//! The shapes are recorded from CRI-O's behaviour as its source states it
//! (cri-o/cri-o `server/runtime_status.go` at v1.29.0, v1.30.0 and v1.33.0,
//! and `pkg/config/config.go` for the JSON of a handler), not made up to suit
//! the probe:
//!
//! * every version: the `RuntimeReady` and `NetworkReady` conditions; with
//!   `verbose`, `info["config"]` is a JSON document;
//! * 1.29 (OpenShift 4.16): no `runtime_handlers`; `info["config"]` is only
//!   `{"sandboxImage": …}`;
//! * 1.30 to 1.32: `runtime_handlers` lists every handler, and the default
//!   one a second time with an empty name; `info["config"]` as in 1.29;
//! * 1.33 and later: as 1.30, and `info["config"]` also holds
//!   `"crio": <RuntimeConfig>`, Go's `encoding/json` of the loaded runtime
//!   configuration: no JSON tags, so keys are Go field names (`Runtimes`,
//!   `RuntimeType`, `RuntimePath`, `RuntimeConfigPath`, …).
//!
//! The 1.33 documents below carry the handler fields CRI-O marshals and a few
//! of the `RuntimeConfig` fields around them, not all of its dozens. Two cases
//! are not CRI-O shapes but hostile input: a malformed `info["config"]`, and
//! a reply larger than the agent accepts.

use kata_node_agent::fixtures::FakeHost;
use kata_node_agent::probe::cri;
use kata_node_agent::{Budgets, ProbeOutcome, ProbeStatus};
use kata_proto::cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use kata_proto::cri::v1::{
    RuntimeCondition, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusRequest,
    StatusResponse, VersionRequest, VersionResponse,
};
use kata_test_harness::kata_test;
use serde_json::{Value, json};
use tokio_stream::wrappers::UnixListenerStream;

use ProbeStatus::{Fail, Ok as Pass, Warn};

const PAUSE: &str = "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123";
const KATA_CONFIG_PATH: &str = "/usr/share/kata-containers/defaults/configuration.toml";

/// One recorded reply.
#[derive(Clone)]
struct Shape {
    version: &'static str,
    handlers: Vec<&'static str>,
    default_runtime: &'static str,
    /// `info["config"]`, as CRI-O writes it.
    config: String,
}

impl Shape {
    fn reply(&self) -> StatusResponse {
        let condition = |kind: &str| RuntimeCondition {
            r#type: kind.to_owned(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let handler = |name: &str| RuntimeHandler {
            name: name.to_owned(),
            features: Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: name != "kata",
            }),
        };
        let mut runtime_handlers = Vec::new();
        for name in &self.handlers {
            runtime_handlers.push(handler(name));
            if *name == self.default_runtime {
                runtime_handlers.push(handler(""));
            }
        }
        StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![condition("RuntimeReady"), condition("NetworkReady")],
            }),
            info: [("config".to_owned(), self.config.clone())].into(),
            runtime_handlers,
            features: None,
        }
    }
}

/// `info["config"]` before 1.33.
fn sandbox_only() -> String {
    json!({ "sandboxImage": PAUSE }).to_string()
}

/// A handler as Go marshals `pkg/config.RuntimeHandler` (v1.33).
fn go_handler(runtime_type: &str, path: &str, config_path: &str, root: &str) -> Value {
    json!({
        "RuntimeConfigPath": config_path,
        "RuntimePath": path,
        "RuntimeType": runtime_type,
        "RuntimeRoot": root,
        "PrivilegedWithoutHostDevices": runtime_type == "vm",
        "AllowedAnnotations": null,
        "DisallowedAnnotations": [],
        "MonitorPath": "/usr/libexec/crio/conmon",
        "MonitorCgroup": "pod",
        "MonitorEnv": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "MonitorExecCgroup": "",
        "PlatformRuntimePaths": null,
        "RuntimePullImage": false,
        "ContainerMinMemory": "",
        "NoSyncLog": false,
        "InheritDefaultRuntime": false,
        "DefaultAnnotations": null,
    })
}

/// `info["config"]` since 1.33; `kata_type` `None` leaves kata out.
fn loaded_config(kata_type: Option<&str>) -> String {
    let mut runtimes = serde_json::Map::new();
    runtimes.insert(
        "crun".to_owned(),
        go_handler("oci", "/usr/bin/crun", "", "/run/crun"),
    );
    runtimes.insert(
        "runc".to_owned(),
        go_handler("oci", "/usr/bin/runc", "", "/run/runc"),
    );
    if let Some(kind) = kata_type {
        runtimes.insert(
            "kata".to_owned(),
            go_handler(
                kind,
                "/usr/bin/containerd-shim-kata-v2",
                KATA_CONFIG_PATH,
                "/run/vc",
            ),
        );
    }
    json!({
        "sandboxImage": PAUSE,
        "crio": {
            "NoPivot": false,
            "SELinux": true,
            "DefaultRuntime": "crun",
            "Conmon": "",
            "CgroupManagerName": "systemd",
            "LogLevel": "info",
            "PinnsPath": "/usr/bin/pinns",
            "Runtimes": runtimes,
            "Workloads": null,
            "PidsLimit": 0,
            "Timezone": "",
        },
    })
    .to_string()
}

struct ShapeServer(Shape);

#[tonic::async_trait]
impl RuntimeService for ShapeServer {
    async fn version(
        &self,
        _: tonic::Request<VersionRequest>,
    ) -> Result<tonic::Response<VersionResponse>, tonic::Status> {
        Ok(tonic::Response::new(VersionResponse {
            version: "0.1.0".to_owned(),
            runtime_name: "cri-o".to_owned(),
            runtime_version: self.0.version.to_owned(),
            runtime_api_version: "v1".to_owned(),
        }))
    }

    async fn status(
        &self,
        request: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, tonic::Status> {
        let mut reply = self.0.reply();
        // As CRI-O: info only when asked verbosely.
        if !request.get_ref().verbose {
            reply.info.clear();
        }
        Ok(tonic::Response::new(reply))
    }
}

/// Serves `shape` on the fixture's CRI-O socket, asks the probe, stops.
async fn ask(shape: &Shape) -> ProbeOutcome {
    let host = FakeHost::good();
    let listener = tokio::net::UnixListener::bind(host.crio_socket_path())
        .expect("bind the CRI-O socket in the fake root");
    let service = ShapeServer(shape.clone());
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(service))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await
            .expect("CRI server");
    });
    let outcome = cri::probe(&host.host_root(), "kata", &Budgets::default()).await;
    server.abort();
    outcome
}

#[kata_test]
async fn cri_o_status_shapes() {
    let with_kata = vec!["crun", "runc", "kata"];
    let without_kata = vec!["crun", "runc"];
    let shape = |version, handlers: &Vec<&'static str>, config: String| Shape {
        version,
        handlers: handlers.clone(),
        default_runtime: "crun",
        config,
    };
    let cases: Vec<(&str, Shape, ProbeStatus, &str, &str)> = vec![
        (
            "1.29 (OCP 4.16)",
            shape("1.29.13", &vec![], sandbox_only()),
            Warn,
            "HandlerUnverifiable",
            "cannot be verified",
        ),
        (
            "1.30-1.32",
            shape("1.30.4", &with_kata, sandbox_only()),
            Pass,
            "HandlerServed",
            "serves runtime handler \"kata\"",
        ),
        (
            "1.30-1.32, no kata",
            shape("1.31.0", &without_kata, sandbox_only()),
            Fail,
            "HandlerNotServed",
            "serves [crun, \"\", runc] but not \"kata\"",
        ),
        (
            "1.33+, kata vm",
            shape("1.33.0", &with_kata, loaded_config(Some("vm"))),
            Pass,
            "HandlerServed",
            KATA_CONFIG_PATH,
        ),
        (
            "1.33+, kata oci",
            shape("1.36.3", &with_kata, loaded_config(Some("oci"))),
            Fail,
            "RuntimeTypeNotVm",
            "RuntimeType \"oci\"",
        ),
        (
            "1.33+, no kata",
            shape("1.34.0", &without_kata, loaded_config(None)),
            Fail,
            "HandlerNotServed",
            "loaded configuration",
        ),
        (
            "hostile: bad JSON",
            shape("?", &with_kata, "{\"crio\": {\"Runtimes\": ".to_owned()),
            Warn,
            "CriInfoInvalid",
            "info[\"config\"] is not JSON",
        ),
        (
            "hostile: 2 MiB reply",
            shape(
                "?",
                &with_kata,
                json!({ "sandboxImage": "x".repeat(2 * 1024 * 1024) }).to_string(),
            ),
            Fail,
            "CriStatusFailed",
            "too large",
        ),
    ];

    println!(
        "{:<22} {:<26} {:<18} {:<5} reason",
        "CRI-O shape", "runtime_handlers", "info[config]", "probe"
    );
    let mut failures = Vec::new();
    for (label, shape, status, reason, part) in &cases {
        let outcome = ask(shape).await;
        let names: Vec<String> = shape
            .reply()
            .runtime_handlers
            .iter()
            .map(|h| format!("{:?}", h.name))
            .collect();
        let config = if serde_json::from_str::<Value>(&shape.config).is_err() {
            "malformed"
        } else if shape.config.contains("\"crio\"") {
            "loaded config"
        } else if shape.config.len() > 1024 {
            "oversized"
        } else {
            "sandboxImage only"
        };
        println!(
            "{label:<22} {:<26} {config:<18} {:<5} {}",
            format!("[{}]", names.join(",")),
            outcome.status.as_str(),
            outcome.reason
        );
        if (outcome.status, outcome.reason) != (*status, *reason) || !outcome.message.contains(part)
        {
            failures.push(format!(
                "{label}: expected {status} {reason} with {part:?}, got {} {}: {}",
                outcome.status, outcome.reason, outcome.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
