//! Host tests that need a running swtpm.

mod appliance;
mod hardening;
mod support;
