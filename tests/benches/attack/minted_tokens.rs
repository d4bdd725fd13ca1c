//! (h) One node's kubelet minting fresh valid tokens for its own agent's
//! Pod, as fast as [`MINT_RATE`], each presented at once in a check-in on a
//! connection of its own: every token is genuine (signed by the issuer,
//! bound to a live Pod of the agents' ServiceAccount), so each one the
//! coordinator has not seen costs a TokenReview unless the node's review
//! rate turns it away.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kata_tests::api_objects::bound_token;
use kata_tests::bench_support::SimulatedAgent;
use kata_tests::demo_world::{AGENT_ACCOUNT, AUDIENCE, NAMESPACE};
use kube::api::Api;
use tokio::sync::watch;
use tonic::transport::Endpoint;

/// Tokens minted a second.
pub const MINT_RATE: u32 = 50;
/// Mints and check-ins in flight at once, at most: a slow API server
/// slows the attacker rather than piling its calls up.
const IN_FLIGHT: usize = 64;

/// Mints tokens for the Pod of `node`'s agent (`agent-<node>`) at
/// [`MINT_RATE`] until `stop`, checking in with each; reports how many were
/// minted and how the coordinator answered, by gRPC code.
pub async fn minted_tokens(
    client: kube::Client,
    endpoint: Endpoint,
    node: String,
    stop: watch::Receiver<bool>,
) -> String {
    let pod_name = format!("agent-{node}");
    let pod = match Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .get(&pod_name)
        .await
    {
        Ok(pod) => pod.metadata,
        Err(error) => return format!("cannot read pod {pod_name}: {error}"),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / MINT_RATE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticks = futures::stream::unfold(tick, |mut tick| async move {
        tick.tick().await;
        Some(((), tick))
    });
    let started = Instant::now();
    let answers: BTreeMap<String, u64> = ticks
        .take_while(|()| std::future::ready(!*stop.borrow()))
        .map(|()| {
            let (client, endpoint, pod, node) =
                (client.clone(), endpoint.clone(), pod.clone(), node.clone());
            async move {
                let token =
                    match bound_token(&client, NAMESPACE, AGENT_ACCOUNT, &pod, AUDIENCE).await {
                        Ok(token) => token,
                        Err(_) => return "mint failed".to_owned(),
                    };
                let answer = match SimulatedAgent::new(endpoint, &token, node) {
                    Ok(mut agent) => agent.check_in().await,
                    Err(error) => Err(error),
                };
                match answer {
                    Ok(_) => "admitted".to_owned(),
                    Err(error) => error
                        .downcast_ref::<tonic::Status>()
                        .map_or_else(|| "no answer".to_owned(), |s| format!("{:?}", s.code())),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .fold(BTreeMap::new(), |mut answers, answer| async move {
            *answers.entry(answer).or_insert(0) += 1;
            answers
        })
        .await;
    let total: u64 = answers.values().sum();
    let seconds = started.elapsed().as_secs_f64();
    let answers: Vec<String> = answers
        .iter()
        .map(|(answer, count)| format!("{answer} {count}"))
        .collect();
    format!(
        "{total} tokens minted for {pod_name} on {node} in {seconds:.0} s ({:.1}/s); check-ins: {}",
        total as f64 / seconds,
        answers.join(", ")
    )
}
