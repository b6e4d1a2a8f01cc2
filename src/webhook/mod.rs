//! Webhooks (PRODUCT.md 9.1): what an application is told about its documents, signed the
//! Standard Webhooks way, sent only where the address rules allow.
//!
//! Pure layers: [`event`] (the events and their JSON bodies), [`signature`] (the headers a
//! receiver checks), [`target`] (the URL and the address rules). [`delivery`] sends them
//! from threads of its own, never from a data-plane executor.

pub mod delivery;
pub mod event;
pub mod signature;
pub mod target;
