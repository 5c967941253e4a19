//! The cloister runner: builds the image, fetches models, provisions swtpm, boots QEMU, and talks
//! to the appliance through the verifying client (the `client` crate). `main.rs` is the command-line
//! front end; the end-to-end tests use this library.

pub mod appliance;
pub mod chat;
pub mod cloud_image;
pub mod disk;
pub mod doctor;
pub mod engine;
pub mod image;
pub mod json_output;
pub mod models;
pub mod pe;
pub mod process;
pub mod progress;
pub mod qemu;
pub mod tools;
pub mod tpm_state;
pub mod uefi;
pub mod verify;
pub mod workspace;

pub use appliance::{Appliance, BootOptions};
pub use image::{BuildOptions, Image, KernelFlavor};
pub use qemu::{Accel, AccelChoice};
