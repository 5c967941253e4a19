//! An in-process stand-in for the appliance's port, for tests of the client: net's TLS 1.3 server (`net::tls`,
//! the code the kernel runs) over a std `TcpStream`, answering each request frame (`net::frame`, `net::proto`)
//! through a closure that also sees the session's channel binding as the appliance computes it. No QEMU, no TPM.
//!
//! Each [`Loopback`] generates its own key pair, like one boot of one appliance; two loopbacks are two
//! appliance instances.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use net::frame::FrameDecoder;
use net::proto::{ChannelBinding, ErrorCode, Request, Response};
use net::tls::{RandomFn, TlsServer, TlsSession};
use rand::RngCore as _;

/// How long a blocked read waits before the loop looks at its stream again.
const POLL: Duration = Duration::from_millis(20);

/// How long a connection may stay silent before the loopback gives up on it.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

fn os_random(buffer: &mut [u8]) -> bool {
    rand::rngs::OsRng.try_fill_bytes(buffer).is_ok()
}

static RANDOM: RandomFn = RandomFn(os_random);

/// What the loopback does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer with one frame.
    Respond(Response),
    /// Answer with these frames, one every `interval`; a `Cancel` arriving in between ends the stream with
    /// `Error(Cancelled)` (as the appliance does).
    Stream {
        /// The frames (tokens, then `Done` or an error).
        frames: Vec<Response>,
        /// The pause before each frame.
        interval: Duration,
    },
    /// Close the connection without answering.
    Close,
}

/// What a loopback saw, once it has served all its connections.
#[derive(Clone, Debug, Default)]
pub struct Served {
    /// The binding of each session whose handshake completed, as the server computed it.
    pub bindings: Vec<ChannelBinding>,
    /// Every request received, in order.
    pub requests: Vec<Request>,
    /// Connections that ended in an error (TLS failure, bad frame, timeout), described.
    pub failures: Vec<String>,
}

/// A TLS appliance stand-in listening on 127.0.0.1.
pub struct Loopback {
    address: SocketAddr,
    spki_sha256: [u8; 32],
    thread: JoinHandle<Served>,
}

impl Loopback {
    /// Listens on a free port and serves `connections` connections, concurrently, with `handler`.
    pub fn start<H>(connections: usize, handler: H) -> Result<Self>
    where
        H: FnMut(&Request, &ChannelBinding) -> Reply + Send + 'static,
    {
        let server = TlsServer::new(&RANDOM)
            .map_err(|error| anyhow!("cannot create the TLS identity: {error:?}"))?;
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot listen on 127.0.0.1")?;
        let address = listener.local_addr()?;
        let spki_sha256 = server.identity().spki_sha256();
        let thread = std::thread::spawn(move || serve(&listener, server, connections, handler));
        Ok(Self {
            address,
            spki_sha256,
            thread,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// SHA-256 of this instance's certificate SubjectPublicKeyInfo.
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.spki_sha256
    }

    /// Waits until every connection was served and returns what was seen.
    pub fn join(self) -> Result<Served> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the loopback server thread panicked"))
    }
}

fn serve<H>(listener: &TcpListener, server: TlsServer, connections: usize, handler: H) -> Served
where
    H: FnMut(&Request, &ChannelBinding) -> Reply + Send + 'static,
{
    // Connections are served at once, each on its own thread; the handler runs for one request at a time.
    let server = Arc::new(server);
    let handler = Arc::new(Mutex::new(handler));
    let served = Arc::new(Mutex::new(Served::default()));
    let mut threads = Vec::new();
    for _ in 0..connections {
        let socket = match listener.accept() {
            Ok((socket, _)) => socket,
            Err(error) => {
                lock(&served).failures.push(format!("accept: {error}"));
                continue;
            }
        };
        let (server, handler, served) = (
            Arc::clone(&server),
            Arc::clone(&handler),
            Arc::clone(&served),
        );
        threads.push(std::thread::spawn(move || {
            let mut handle = |request: &Request, binding: &ChannelBinding| {
                let mut handler = handler.lock().unwrap_or_else(PoisonError::into_inner);
                (*handler)(request, binding)
            };
            let result = Connection::new(socket, &server).and_then(|mut connection| {
                let result = connection.run(&server, &mut handle, &served);
                // Whatever happened, send what is queued (an alert, a close_notify).
                connection.tls.close();
                let _ = connection.flush();
                result
            });
            if let Err(error) = result {
                lock(&served).failures.push(format!("{error:#}"));
            }
        }));
    }
    for thread in threads {
        if thread.join().is_err() {
            lock(&served)
                .failures
                .push("a connection thread panicked".to_string());
        }
    }
    let served = lock(&served).clone();
    served
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Connection {
    socket: TcpStream,
    tls: TlsSession,
    decoder: FrameDecoder,
    /// Requests decoded but not handled yet.
    pending: Vec<Request>,
    binding: Option<ChannelBinding>,
    peer_closed: bool,
}

impl Connection {
    fn new(socket: TcpStream, server: &TlsServer) -> Result<Self> {
        socket.set_read_timeout(Some(POLL))?;
        socket.set_nodelay(true)?;
        let tls = server
            .session()
            .map_err(|error| anyhow!("cannot start a TLS session: {error:?}"))?;
        Ok(Self {
            socket,
            tls,
            decoder: FrameDecoder::new(),
            pending: Vec::new(),
            binding: None,
            peer_closed: false,
        })
    }

    fn flush(&mut self) -> Result<()> {
        let mut out = Vec::new();
        self.tls.take_outgoing(&mut out);
        if !out.is_empty() {
            self.socket.write_all(&out).context("cannot write")?;
        }
        Ok(())
    }

    /// Reads what arrives within [`POLL`], decrypts it and decodes whole frames into `pending`.
    fn pump(&mut self, server: &TlsServer, served: &Mutex<Served>) -> Result<()> {
        let mut buffer = [0u8; 16 * 1024];
        let count = match self.socket.read(&mut buffer) {
            Ok(0) => {
                self.peer_closed = true;
                return Ok(());
            }
            Ok(count) => count,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(())
            }
            Err(error) => return Err(error).context("cannot read"),
        };
        let mut offset = 0;
        while offset < count {
            let taken = self.tls.feed_incoming(&buffer[offset..count]);
            self.flush()?;
            let taken = taken.map_err(|error| anyhow!("TLS failed: {error:?}"))?;
            offset += taken;
            self.decode(served)?;
        }
        if self.binding.is_none() && !self.tls.is_handshaking() {
            let exporter = self
                .tls
                .attestation_exporter()
                .map_err(|error| anyhow!("no exporter: {error:?}"))?;
            let binding = ChannelBinding {
                spki_sha256: server.identity().spki_sha256(),
                exporter,
            };
            lock(served).bindings.push(binding);
            self.binding = Some(binding);
        }
        if self.tls.peer_closed() {
            self.peer_closed = true;
        }
        Ok(())
    }

    fn decode(&mut self, served: &Mutex<Served>) -> Result<()> {
        loop {
            let plaintext = self.tls.plaintext().to_vec();
            if plaintext.is_empty() {
                return Ok(());
            }
            let taken = self
                .decoder
                .push(&plaintext)
                .map_err(|error| anyhow!("bad frame: {error:?}"))?;
            self.tls.consume_plaintext(taken);
            if let Some(body) = self.decoder.frame() {
                let request =
                    Request::parse(body).map_err(|error| anyhow!("bad request: {error:?}"))?;
                self.decoder.consume();
                lock(served).requests.push(request.clone());
                self.pending.push(request);
            }
        }
    }

    fn send(&mut self, response: &Response) -> Result<()> {
        let mut frame = Vec::new();
        response
            .emit(&mut frame)
            .map_err(|error| anyhow!("cannot frame: {error:?}"))?;
        self.tls
            .write_plaintext(&frame)
            .map_err(|error| anyhow!("TLS write failed: {error:?}"))?;
        self.flush()
    }

    fn run<H>(&mut self, server: &TlsServer, handler: &mut H, served: &Mutex<Served>) -> Result<()>
    where
        H: FnMut(&Request, &ChannelBinding) -> Reply,
    {
        let mut last_activity = Instant::now();
        loop {
            if self.pending.is_empty() {
                if self.peer_closed {
                    return Ok(());
                }
                if last_activity.elapsed() > IDLE_LIMIT {
                    bail!("the client was idle for {} s", IDLE_LIMIT.as_secs());
                }
                self.pump(server, served)?;
                continue;
            }
            last_activity = Instant::now();
            let request = self.pending.remove(0);
            let Some(binding) = self.binding else {
                bail!("a request arrived before the handshake completed");
            };
            if request == Request::Cancel {
                // Nothing is running: ignored, as the appliance does.
                continue;
            }
            match handler(&request, &binding) {
                Reply::Respond(response) => self.send(&response)?,
                Reply::Close => return Ok(()),
                Reply::Stream { frames, interval } => {
                    self.stream(server, served, frames, interval)?
                }
            }
        }
    }

    fn stream(
        &mut self,
        server: &TlsServer,
        served: &Mutex<Served>,
        frames: Vec<Response>,
        interval: Duration,
    ) -> Result<()> {
        for frame in frames {
            let due = Instant::now() + interval;
            while Instant::now() < due {
                self.pump(server, served)?;
                if let Some(at) = self.pending.iter().position(|r| *r == Request::Cancel) {
                    self.pending.remove(at);
                    return self.send(&Response::Error(ErrorCode::Cancelled));
                }
                if self.peer_closed {
                    return Ok(());
                }
            }
            self.send(&frame)?;
        }
        Ok(())
    }
}
