//! Host tests that need a running swtpm.

mod appliance;
mod support;
