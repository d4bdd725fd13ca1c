//! Objects a test creates the way a real cluster would have them: Nodes,
//! and the Pods whose bound tokens the node-agents present.

use kube::api::Api;

use crate::Error;

/// Creates a Node with the given labels (a worker unless told otherwise).
pub async fn create_node(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<(), Error> {
    use k8s_openapi::api::core::v1::Node;
    let node = Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Node>::all(client.clone())
        .create(&Default::default(), &node)
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// Creates a Pod of ServiceAccount `account` on `node` (no kubelet runs: it
/// only has to exist) and returns a token bound to that Pod for `audience`,
/// as the kubelet would project it into the node-agent.
pub async fn pod_bound_token(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    pod: &str,
    node: &str,
    audience: &str,
) -> Result<String, Error> {
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(account.into()),
            containers: vec![Container {
                name: "agent".into(),
                image: Some("agent:test".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&Default::default(), &pod)
        .await
        .map_err(Error::Kube)?;
    bound_token(client, namespace, account, &pod.metadata, audience).await
}

/// Another token for `audience` bound to the Pod `pod` (its name and uid),
/// as a kubelet may request for any Pod bound to its node.
pub async fn bound_token(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    pod: &kube::api::ObjectMeta,
    audience: &str,
) -> Result<String, Error> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            // A day: no kubelet refreshes these tokens, and a demo may run long.
            expiration_seconds: Some(86_400),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &Default::default(), &request)
        .await
        .map_err(Error::Kube)?;
    response
        .status
        .map(|s| s.token)
        .ok_or_else(|| Error::Setup("TokenRequest returned no token".into()))
}

/// An API token of the ServiceAccount `account` in `namespace`, bound to
/// nothing (an hour): a client on it has exactly that account's RBAC.
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    account: &str,
) -> Result<String, Error> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &Default::default(), &request)
        .await
        .map_err(Error::Kube)?
        .status
        .map(|status| status.token)
        .ok_or_else(|| Error::Setup(format!("no token in the TokenRequest for {account}")))
}

/// The names of the objects `api` lists with `params`, sorted.
pub async fn listed_names<K>(
    api: &Api<K>,
    params: &kube::api::ListParams,
) -> Result<Vec<String>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut names: Vec<String> = api
        .list(params)
        .await?
        .items
        .iter()
        .map(kube::ResourceExt::name_any)
        .collect();
    names.sort();
    Ok(names)
}
