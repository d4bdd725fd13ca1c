//! The operator's own manifests (`deploy/`), read and installed into a test
//! control plane.

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use serde::Deserialize;

use crate::{ControlPlane, Error};

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document of a file, as dynamic objects.
pub fn read_manifests(path: &Path) -> Result<Vec<DynamicObject>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
            serde_yaml::from_value(value)
                .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
        })
        .collect()
}

/// Applies objects with server-side apply, finding each one's resource by discovery.
pub async fn apply_objects(plane: &ControlPlane, objects: &[DynamicObject]) -> Result<(), Error> {
    let client = plane.client().await?;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(Error::Kube)?;
    for object in objects {
        let types = object
            .types
            .clone()
            .ok_or_else(|| Error::Setup("manifest without apiVersion/kind".into()))?;
        let gvk = kube::api::GroupVersionKind::try_from(&types)
            .map_err(|e| Error::Setup(e.to_string()))?;
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| Error::Setup(format!("the API server does not serve {gvk:?}")))?;
        let name = object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match (caps.scope, object.metadata.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
            (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("kata-tests").force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(Error::Kube)?;
    }
    Ok(())
}

/// A control plane with the OpenShift MCO CRDs, the KataConfig CRD and the
/// singleton admission policy installed.
pub async fn control_plane_with_operator_api() -> Result<ControlPlane, Error> {
    let plane = ControlPlane::start().await?;
    install_operator_api(&plane).await?;
    Ok(plane)
}

/// Installs the OpenShift MCO CRDs, the operator's CRDs and the singleton
/// admission policy into a running control plane.
pub async fn install_operator_api(plane: &ControlPlane) -> Result<(), Error> {
    plane.install_openshift_crds().await?;
    plane.install_crds(&operator_crds()).await?;
    apply_objects(
        plane,
        &read_manifests(&deploy_dir().join("base/kataconfig-singleton.yaml"))?,
    )
    .await
}

pub fn kata_coordinator_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    kata_coordinator::api::KataConfig::crd()
}

/// The operator's CRDs: the KataConfig's and the KataRuntimeProfile's.
pub fn operator_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        kata_coordinator_crd(),
        kata_coordinator::profiles::KataRuntimeProfile::crd(),
    ]
}

/// A stand-in for the Prometheus Operator's PodMonitor CRD
/// (tests/monitoring/podmonitor-crd.yaml): its names and scope, the spec
/// kept as written.
pub fn pod_monitor_crd() -> Result<
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    Error,
> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/podmonitor-crd.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_yaml::from_str(&text).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}
