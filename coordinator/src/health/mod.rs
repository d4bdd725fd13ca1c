//! The coordinator's side of the agents' health channel: one gRPC stream per
//! node-agent over TLS, authenticated by a pod-bound ServiceAccount token
//! checked with TokenReview ([`auth`]), whose reports land in a shared
//! in-memory view ([`registry`]) that the node labeller reads.
//!
//! The agent is never trusted to say which node it is: the stream is bound to
//! the node named in its token, and a Hello for any other node is refused.

pub mod auth;
pub mod clock;
pub mod connection;
pub mod connection_state;
pub mod gate;
pub mod hello;
pub mod issuer_keys;
mod jose;
pub mod labeller;
pub mod marks;
pub mod places;
pub mod pods;
pub mod refusals;
pub mod registry;
pub mod server;
pub mod tls;

pub use auth::{
    AgentAuthenticator, AgentIdentity, AuthError, ReviewFairness, identity_from_review,
};
pub use registry::{HealthRegistry, NodeHealth};
pub use server::{HealthOptions, HealthService, expected_config, serve};
pub use tls::{ServerTls, TlsError};
