//! Shared helpers for the end-to-end tests: build each kernel flavour once, write model files,
//! boot an appliance, and speak the framed protocol over raw sockets.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use net::proto::{Request, Response};
use runner::appliance::{Appliance, BootOptions};
use runner::image::{self, Image, KernelFlavor};
use runner::qemu::AccelChoice;

/// Builds (once per test binary) the kernel of the given flavour and returns its ELF path.
pub fn kernel(flavor: KernelFlavor) -> PathBuf {
    static RELEASE: OnceLock<PathBuf> = OnceLock::new();
    static DEBUG: OnceLock<PathBuf> = OnceLock::new();
    // Cargo builds of the two flavours use separate target dirs, but serialise them anyway so two
    // tests do not run two nested cargo invocations on the same directory at once.
    static BUILD: Mutex<()> = Mutex::new(());
    let cell = if flavor.debug_console {
        &DEBUG
    } else {
        &RELEASE
    };
    cell.get_or_init(|| {
        let _guard = BUILD
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        image::build_kernel(flavor).expect("kernel build failed")
    })
    .clone()
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing run can be reproduced.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a model file of `len` bytes into `dir` and returns its path.
pub fn write_model(dir: &Path, seed: u64, len: usize) -> PathBuf {
    let path = dir.join("model.bin");
    std::fs::write(&path, pseudo_random_bytes(seed, len)).expect("write model");
    path
}

/// Assembles an image in `dir` and boots it under TCG (KVM is not usable on these machines).
pub fn boot(dir: &Path, flavor: KernelFlavor, model: &Path, cmdline: &str) -> (Image, Appliance) {
    let kernel = kernel(flavor);
    let image = image::assemble(&kernel, model, cmdline, &dir.join("image"), flavor)
        .expect("assemble image");
    let mut options = BootOptions::new(image.clone());
    options.accel = AccelChoice::Tcg;
    options.mem_mib = 256;
    options.echo_serial = false;
    options.ready_timeout = Some(Duration::from_secs(240));
    let appliance = Appliance::boot(&options).expect("appliance boots and answers");
    (image, appliance)
}

/// Connects with a short timeout on every operation.
pub fn connect(endpoint: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&endpoint, Duration::from_secs(10)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    stream
}

/// Reads one frame; `None` when the appliance closed the connection (EOF or reset) first.
pub fn read_response(stream: &mut TcpStream) -> Option<Response> {
    let mut header = [0u8; 4];
    if stream.read_exact(&mut header).is_err() {
        return None;
    }
    let len = u32::from_be_bytes(header) as usize;
    assert!(
        len <= net::frame::MAX_FRAME_LEN,
        "appliance sent an oversized frame: {len}"
    );
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("frame body");
    Some(Response::parse(&body).expect("appliance sent a valid response"))
}

/// True once the appliance has closed `stream` (EOF or reset), waiting at most `limit`.
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Sends a model-info request on a fresh connection and returns the answer.
pub fn model_info(endpoint: SocketAddr) -> net::proto::ModelInfo {
    let mut stream = connect(endpoint);
    let mut frame = Vec::new();
    Request::ModelInfo.emit(&mut frame).expect("encode");
    stream.write_all(&frame).expect("send request");
    match read_response(&mut stream) {
        Some(Response::ModelInfo(info)) => info,
        other => panic!("expected model info, got {other:?}"),
    }
}

/// Measures how long `f` takes.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}
