//! okta-token-operator: keeps Okta `client_credentials` access tokens fresh
//! in Kubernetes Secrets, authenticating with `private_key_jwt` assertions
//! signed by AWS KMS keys that never leave KMS.

pub mod assertion;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod http;
pub mod jwk;
pub mod kms;
pub mod mint;
pub mod okta;
pub mod schedule;
pub mod secret;
pub mod telemetry;
