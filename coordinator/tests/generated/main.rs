//! The checked-in artifacts generated from the code (the CRD, the
//! coordinator's RBAC, the API reference) are exactly what the code
//! generates now: each test fails naming `make generate` when one is stale.

mod api_reference;
mod crd;
mod rbac;
