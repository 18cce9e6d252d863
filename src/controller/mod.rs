//! The Kubernetes controller.

pub mod gating;
