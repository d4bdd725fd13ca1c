//! The uninstall's gate: the pods, in any namespace, that still use a
//! RuntimeClass we own, listed a page at a time and only when the answer
//! can have changed.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::{Context, Error, observe_error};
use crate::api::KataConfig;
use crate::kata_pods;
use crate::names;

impl Context {
    /// Pods, in any namespace, that are not finished and use a RuntimeClass
    /// we own: listed when [`kata_pods::check`] says the answer can have
    /// changed, else the last answer.
    pub(super) async fn pods_using_kata(
        &self,
        config: &KataConfig,
        runtime_class_exists: bool,
    ) -> Result<Vec<String>, Error> {
        let uid = config.uid().unwrap_or_default();
        let now = std::time::Instant::now();
        {
            let last = self.kata_pods.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(answer) = last.as_ref()
                && kata_pods::check(Some(answer), &uid, runtime_class_exists, now)
                    == kata_pods::PodCheck::Reuse
            {
                return Ok(answer.pods.clone());
            }
        }
        let pods = self.list_pods_using_kata(config).await?;
        *self.kata_pods.lock().unwrap_or_else(|p| p.into_inner()) = Some(kata_pods::Answer {
            uid,
            listed_at: now,
            pods: pods.clone(),
        });
        Ok(pods)
    }

    pub(super) fn forget_kata_pods(&self) {
        *self.kata_pods.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Lists every unfinished pod, a page at a time (so memory holds one
    /// page, not the cluster's pods), keeping those that name a
    /// RuntimeClass we own.
    pub(super) async fn list_pods_using_kata(
        &self,
        config: &KataConfig,
    ) -> Result<Vec<String>, Error> {
        let mut owned: Vec<String> = config
            .status
            .iter()
            .flat_map(|s| s.runtime_classes.clone())
            .collect();
        owned.push(names::RUNTIME_CLASS_NAME.into());
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut params = ListParams::default()
            .fields("status.phase!=Succeeded,status.phase!=Failed")
            .limit(500);
        let mut found = Vec::new();
        loop {
            let page = pods.list(&params).await.map_err(observe_error("pods"))?;
            for pod in &page.items {
                let class = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.runtime_class_name.as_ref());
                if class.is_some_and(|c| owned.contains(c)) {
                    found.push(format!(
                        "{}/{}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    ));
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        Ok(found)
    }
}
