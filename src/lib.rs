//! multiarch-operator: build one container image natively for several platforms on AWS Batch and
//! publish the multi-platform image index, driven by a Kubernetes resource.

pub mod api;
pub mod attest;
pub mod backoff;
pub mod batch;
pub mod cli;
pub mod config;
pub mod controller;
pub mod crypto;
pub mod engine;
pub mod logs;
pub mod oneshot;
pub mod plan;
pub mod provenance;
pub mod registry;
pub mod signing;
pub mod strict;
pub mod tenancy;
mod util;
pub mod verify;
