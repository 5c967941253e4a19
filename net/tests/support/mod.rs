//! Test bench for `net::Server`: an in-memory Ethernet link between the server's interface and a client
//! smoltcp interface, virtual time, scripted TCP clients (plaintext, or TLS 1.3 through a rustls client),
//! a scripted streaming handler that checks the `Handler` contract, and a tiny DHCPv4 server (RFC 2131).

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the bench"
)]

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use net::frame::FrameDecoder;
use net::proto::{
    ChannelBinding, Done, ErrorCode, FinishReason, GenerateRequest, ModelInfo, Prompt, Request,
    Response, Sampling, Token,
};
use net::tls::{RandomFn, TlsServer};
use net::{Handler, Limits, NetConfig, Reply, Server, Step};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

pub const SERVER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
pub const CLIENT_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
pub const SERVER_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
pub const CLIENT_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
pub const PORT: u16 = 7000;

pub const INFO: ModelInfo = ModelInfo {
    length: 98_362_432,
    sha256: [0x5a; 32],
};

/// Frames in flight, one queue per direction: `queues[side]` is what `side` will receive.
type Queues = Rc<RefCell<[VecDeque<Vec<u8>>; 2]>>;

pub const SERVER_SIDE: usize = 0;
pub const CLIENT_SIDE: usize = 1;

/// One end of the link, as a smoltcp device.
pub struct Port {
    queues: Queues,
    side: usize,
}

pub struct RxToken(Vec<u8>);

pub struct TxToken {
    queues: Queues,
    to: usize,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.queues.borrow_mut()[self.to].push_back(frame);
        result
    }
}

impl phy::Device for Port {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken)> {
        let frame = self.queues.borrow_mut()[self.side].pop_front()?;
        Some((
            RxToken(frame),
            TxToken {
                queues: self.queues.clone(),
                to: 1 - self.side,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken> {
        Some(TxToken {
            queues: self.queues.clone(),
            to: 1 - self.side,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// Token ids the bench's handler accepts in a prompt (`0..VOCAB`).
pub const VOCAB: u32 = 1000;

/// The most tokens the bench's handler generates; more is `ContextExceeded`.
pub const CONTEXT: u32 = 10_000;

/// Generation sessions the bench's handler has by default (fewer than the default connection slots would
/// be in the kernel; tests that need `Busy` lower it).
pub const SESSIONS: usize = 4;

/// A token label that makes the bench's handler produce tokens too large for one frame.
pub const HUGE: &str = "huge";

/// One running generation of the bench's handler.
#[derive(Clone, Debug)]
pub struct Generation {
    /// `Pending` steps still to take before the first token (the prompt's "prefill").
    pub prefill_left: u32,
    pub prompt_tokens: u32,
    pub generated: u32,
    pub max_tokens: u32,
    /// Prefix of every token's text, so a client can tell its tokens from another's.
    pub label: String,
}

/// The bench's appliance: model info, plus a scripted generator that checks the `Handler` contract.
///
/// `Generate` with `Prompt::Text(label)`: one pending step, then `max_tokens` tokens whose text is
/// `"{label}{i} "`, then `Done`. With `Prompt::Tokens(ids)`: one pending step per id (ids must be below
/// [`VOCAB`], or `InvalidToken`), tokens labelled `"t"`. `max_tokens` over [`CONTEXT`] is
/// `ContextExceeded`; no free session is `Busy`. A call the contract forbids (a step or stop for a slot
/// with no generation, a request for a slot that is generating, a `Cancel`) panics, failing the test.
pub struct TestHandler {
    /// Requests handled.
    pub calls: usize,
    /// Generation sessions; a `Generate` beyond them gets `Busy`.
    pub sessions: usize,
    pub running: BTreeMap<usize, Generation>,
    /// The slot of every step, in order.
    pub steps: Vec<usize>,
    /// The slot of every stop, in order.
    pub stops: Vec<usize>,
    /// Generations that ended with `Step::Final`.
    pub finished: usize,
    /// The channel binding of each request, in order.
    pub bindings: Vec<Option<ChannelBinding>>,
    /// Requests still to answer with `Reply::Defer` (each offer counts one) before answering again.
    pub defer: usize,
}

impl Default for TestHandler {
    fn default() -> Self {
        Self {
            calls: 0,
            sessions: SESSIONS,
            running: BTreeMap::new(),
            steps: Vec::new(),
            stops: Vec::new(),
            finished: 0,
            bindings: Vec::new(),
            defer: 0,
        }
    }
}

impl TestHandler {
    /// Stops so far for `slot`.
    pub fn stops_of(&self, slot: usize) -> usize {
        self.stops
            .iter()
            .filter(|&&stopped| stopped == slot)
            .count()
    }

    fn generate(&mut self, slot: usize, request: &GenerateRequest) -> Reply {
        let (label, prefill, prompt_tokens) = match &request.prompt {
            Prompt::Text(label) => (label.clone(), 1, 1),
            Prompt::Tokens(ids) => {
                if ids.iter().any(|&id| id >= VOCAB) {
                    return Reply::Response(Response::Error(ErrorCode::InvalidToken));
                }
                ("t".to_string(), ids.len() as u32, ids.len() as u32)
            }
            Prompt::Chat(_) => return Reply::Response(Response::Error(ErrorCode::BadRequest)),
        };
        if request.max_tokens > CONTEXT {
            return Reply::Response(Response::Error(ErrorCode::ContextExceeded));
        }
        if self.running.len() >= self.sessions {
            return Reply::Response(Response::Error(ErrorCode::Busy));
        }
        self.running.insert(
            slot,
            Generation {
                prefill_left: prefill,
                prompt_tokens,
                generated: 0,
                max_tokens: request.max_tokens,
                label,
            },
        );
        Reply::Streaming
    }
}

impl Handler for TestHandler {
    fn handle(
        &mut self,
        slot: usize,
        request: &Request,
        binding: Option<&ChannelBinding>,
    ) -> Reply {
        if self.defer > 0 {
            self.defer -= 1;
            return Reply::Defer;
        }
        self.calls += 1;
        self.bindings.push(binding.copied());
        assert!(
            !self.running.contains_key(&slot),
            "request {request:?} for slot {slot} while it generates"
        );
        match request {
            Request::ModelInfo => Reply::Response(Response::ModelInfo(INFO)),
            Request::Generate(generate) => self.generate(slot, generate),
            Request::Cancel => panic!("the server passed a cancel to the handler"),
            // The bench serves model info and generation only; the kernel answers attestation requests.
            Request::Attest { .. } | Request::ActivateCredential { .. } => {
                Reply::Response(Response::Error(ErrorCode::BadRequest))
            }
        }
    }

    fn step(&mut self, slot: usize) -> Step {
        self.steps.push(slot);
        let generation = self
            .running
            .get_mut(&slot)
            .unwrap_or_else(|| panic!("step for slot {slot}, which has no generation"));
        if generation.prefill_left > 0 {
            generation.prefill_left -= 1;
            return Step::Pending;
        }
        if generation.generated < generation.max_tokens {
            let i = generation.generated;
            generation.generated += 1;
            let text = if generation.label == HUGE {
                "x".repeat(net::frame::MAX_FRAME_LEN + 1)
            } else {
                format!("{}{i} ", generation.label)
            };
            return Step::Frame(Response::Token(Token {
                id: i % VOCAB,
                text,
            }));
        }
        let done = Done {
            reason: FinishReason::Length,
            prompt_tokens: generation.prompt_tokens,
            generated_tokens: generation.generated,
            prefill_us: 0,
            decode_us: 0,
        };
        self.running.remove(&slot);
        self.finished += 1;
        Step::Final(Response::Done(done))
    }

    fn stop(&mut self, slot: usize) {
        self.stops.push(slot);
        assert!(
            self.running.remove(&slot).is_some(),
            "stop for slot {slot}, which has no generation"
        );
    }
}

/// A generate request for `max_tokens` tokens labelled `label`.
pub fn generate_request(label: &str, max_tokens: u32) -> Request {
    Request::Generate(GenerateRequest {
        prompt: Prompt::Text(label.to_string()),
        max_tokens,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    })
}

/// `request` as one frame.
pub fn frame_of(request: &Request) -> Vec<u8> {
    let mut frame = Vec::new();
    request.emit(&mut frame).unwrap();
    frame
}

/// Deterministic "randomness" for the server's TLS identity (tests only).
fn test_fill(buf: &mut [u8]) -> bool {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    for chunk in buf.chunks_mut(32) {
        let block = Sha256::digest(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    true
}
pub static RANDOM: RandomFn = RandomFn(test_fill);

/// Accepts any certificate whose TLS 1.3 signature verifies (the bench tests transport, not attestation).
#[derive(Debug)]
pub struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls TLS 1.3 client that accepts the server's certificate ([`AnyCert`]).
pub fn rustls_client() -> ClientConnection {
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("a.invalid").unwrap()).unwrap()
}

/// A scripted client connection.
pub struct Client {
    pub handle: SocketHandle,
    /// Bytes still to write (plaintext; encrypted on the way when the client speaks TLS).
    pub outbox: Vec<u8>,
    /// Bytes received so far (plaintext, decrypted when the client speaks TLS).
    pub inbox: Vec<u8>,
    /// The client's TLS session, for a client that speaks TLS.
    pub tls: Option<Box<ClientConnection>>,
    /// Bytes for the socket (TLS records, or the plaintext itself) not yet written.
    pub wire_out: Vec<u8>,
    /// The client's TLS session failed on what the server sent.
    pub tls_error: Option<rustls::Error>,
    /// Close our side once the outbox is written.
    pub close_when_sent: bool,
    /// Close our side when the server closes its side (what a well-behaved client does at EOF).
    pub close_on_eof: bool,
    /// Read what arrives; a client that stops reading lets its receive window fill.
    pub reading: bool,
    pub was_established: bool,
    /// The server closed its side with FIN (as opposed to RST or not at all).
    pub saw_eof: bool,
}

impl Client {
    /// The text of every token received, concatenated.
    pub fn text(&self) -> String {
        self.responses()
            .iter()
            .filter_map(|response| match response {
                Response::Token(token) => Some(token.text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Token frames received so far.
    pub fn token_count(&self) -> usize {
        self.responses()
            .iter()
            .filter(|response| matches!(response, Response::Token(_)))
            .count()
    }

    /// Decodes every complete response frame in the inbox. Panics on bytes that are not valid frames:
    /// the server must only ever send well-formed responses.
    pub fn responses(&self) -> Vec<Response> {
        let mut decoder = FrameDecoder::new();
        let mut rest = &self.inbox[..];
        let mut responses = Vec::new();
        while !rest.is_empty() {
            let taken = decoder.push(rest).expect("server sent a malformed frame");
            rest = &rest[taken..];
            if let Some(body) = decoder.frame() {
                responses.push(Response::parse(body).expect("server sent an undecodable response"));
                decoder.consume();
            }
        }
        assert!(
            !decoder.is_mid_frame() || !self.saw_eof,
            "server closed in the middle of a response"
        );
        responses
    }
}

/// The server, a client interface and the link between them, driven in virtual time.
pub struct Bench {
    pub now: Instant,
    pub server: Server,
    pub handler: TestHandler,
    server_port: Port,
    client_iface: Interface,
    client_port: Port,
    pub sockets: SocketSet<'static>,
    pub clients: Vec<Client>,
    queues: Queues,
    dhcp: Option<DhcpServer>,
    next_local_port: u16,
    /// The server speaks TLS: [`Bench::assert_serves_a_new_client`] connects with TLS too.
    pub tls: bool,
}

/// One millisecond per step: finer than any timer that matters here.
pub const STEP: Duration = Duration::from_millis(1);

impl Bench {
    /// A server with a static address, the default limits, and a client on the same subnet.
    pub fn new() -> Self {
        Self::with(
            &format!("ip={SERVER_IP}/24 gw={CLIENT_IP} port={PORT}"),
            Limits::default(),
        )
    }

    pub fn with_limits(limits: Limits) -> Self {
        Self::with(
            &format!("ip={SERVER_IP}/24 gw={CLIENT_IP} port={PORT}"),
            limits,
        )
    }

    /// A server configured from a command line. With `ip=dhcp`, the bench's DHCP server answers it.
    pub fn with(command_line: &str, limits: Limits) -> Self {
        let queues: Queues = Rc::new(RefCell::new([VecDeque::new(), VecDeque::new()]));
        let mut server_port = Port {
            queues: queues.clone(),
            side: SERVER_SIDE,
        };
        let mut client_port = Port {
            queues: queues.clone(),
            side: CLIENT_SIDE,
        };
        let now = Instant::from_secs(1000);
        let config = NetConfig::parse(command_line).expect("bench command line");
        let server = Server::with_limits(config, limits, SERVER_MAC, &mut server_port, now, 0x5eed)
            .expect("server builds");

        let mut client_config = Config::new(CLIENT_MAC.into());
        client_config.random_seed = 0xc1e7;
        let mut client_iface = Interface::new(client_config, &mut client_port, now);
        client_iface.update_ip_addrs(|addresses| {
            addresses
                .push(IpCidr::new(IpAddress::Ipv4(CLIENT_IP), 24))
                .unwrap();
        });
        let dhcp = matches!(config.ipv4, net::Ipv4Setup::Dhcp).then(DhcpServer::default);
        Self {
            now,
            server,
            handler: TestHandler::default(),
            server_port,
            client_iface,
            client_port,
            sockets: SocketSet::new(Vec::new()),
            clients: Vec::new(),
            queues,
            dhcp,
            next_local_port: 40000,
            tls: false,
        }
    }

    /// A server that speaks TLS 1.3 on every connection (a fresh identity), with `limits`.
    pub fn tls_with_limits(limits: Limits) -> Self {
        let mut bench = Self::with_limits(limits);
        let config =
            NetConfig::parse(&format!("ip={SERVER_IP}/24 gw={CLIENT_IP} port={PORT}")).unwrap();
        let now = bench.now;
        let tls = TlsServer::new(&RANDOM).expect("TLS identity");
        bench.server = Server::with_tls(
            config,
            limits,
            SERVER_MAC,
            bench.server_device(),
            now,
            0x5eed,
            tls,
        )
        .expect("server builds");
        bench.tls = true;
        bench
    }

    /// Opens a client connection to the server; returns its index in `clients`.
    pub fn connect(&mut self) -> usize {
        self.connect_with_buffers(128 * 1024, 128 * 1024)
    }

    /// Opens a client connection that speaks TLS 1.3 (a rustls client); the bench encrypts what is sent
    /// and decrypts what arrives, so the other helpers work unchanged.
    pub fn connect_tls(&mut self) -> usize {
        let client = self.connect();
        self.clients[client].tls = Some(Box::new(rustls_client()));
        client
    }

    /// Opens a plaintext or TLS client.
    pub fn connect_as(&mut self, tls: bool) -> usize {
        if tls {
            self.connect_tls()
        } else {
            self.connect()
        }
    }

    pub fn connect_with_buffers(&mut self, rx: usize, tx: usize) -> usize {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        );
        let local_port = self.next_local_port;
        self.next_local_port += 1;
        socket
            .connect(self.client_iface.context(), (SERVER_IP, PORT), local_port)
            .expect("connect");
        let handle = self.sockets.add(socket);
        self.clients.push(Client {
            handle,
            outbox: Vec::new(),
            inbox: Vec::new(),
            tls: None,
            wire_out: Vec::new(),
            tls_error: None,
            close_when_sent: false,
            close_on_eof: true,
            reading: true,
            was_established: false,
            saw_eof: false,
        });
        self.clients.len() - 1
    }

    pub fn send(&mut self, client: usize, bytes: &[u8]) {
        self.clients[client].outbox.extend_from_slice(bytes);
    }

    pub fn send_request(&mut self, client: usize) {
        self.send(client, &frame_of(&Request::ModelInfo));
    }

    /// Asks for a generation of `max_tokens` tokens labelled `label`.
    pub fn send_generate(&mut self, client: usize, label: &str, max_tokens: u32) {
        self.send(client, &frame_of(&generate_request(label, max_tokens)));
    }

    pub fn send_cancel(&mut self, client: usize) {
        self.send(client, &frame_of(&Request::Cancel));
    }

    /// Closes the client's side once its outbox is written.
    pub fn close(&mut self, client: usize) {
        self.clients[client].close_when_sent = true;
    }

    /// Sends RST and forgets the connection.
    pub fn abort(&mut self, client: usize) {
        self.socket(client).abort();
    }

    pub fn socket(&mut self, client: usize) -> &mut tcp::Socket<'static> {
        let handle = self.clients[client].handle;
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    pub fn state(&mut self, client: usize) -> tcp::State {
        self.socket(client).state()
    }

    /// True once the connection is over on the client's side (closed or in TIME-WAIT).
    pub fn is_finished(&mut self, client: usize) -> bool {
        matches!(
            self.state(client),
            tcp::State::Closed | tcp::State::TimeWait
        )
    }

    /// Polls the server, the DHCP server and the client once, then advances time by [`STEP`].
    pub fn step(&mut self) {
        self.server
            .poll(self.now, &mut self.server_port, &mut self.handler);
        if let Some(dhcp) = &mut self.dhcp {
            dhcp.serve(&self.queues);
        }
        self.poll_clients();
        self.now += STEP;
    }

    /// Runs the clients' side alone (no server poll, no time passing), then puts what they wrote on the
    /// link: the server's next poll sees it.
    pub fn flush_clients(&mut self) {
        self.poll_clients();
        self.client_iface
            .poll(self.now, &mut self.client_port, &mut self.sockets);
    }

    /// The clients' half of a step: their interface, then each scripted client.
    fn poll_clients(&mut self) {
        self.client_iface
            .poll(self.now, &mut self.client_port, &mut self.sockets);
        for client in &mut self.clients {
            let socket = self.sockets.get_mut::<tcp::Socket>(client.handle);
            if socket.state() == tcp::State::Established {
                client.was_established = true;
            }
            match &mut client.tls {
                Some(tls) => {
                    if !client.outbox.is_empty() {
                        // rustls holds plaintext written during the handshake until it completes.
                        tls.writer().write_all(&client.outbox).unwrap();
                        client.outbox.clear();
                    }
                    while tls.wants_write() {
                        tls.write_tls(&mut client.wire_out).unwrap();
                    }
                }
                None => client.wire_out.append(&mut client.outbox),
            }
            if socket.can_send() && !client.wire_out.is_empty() {
                let sent = socket.send_slice(&client.wire_out).unwrap();
                client.wire_out.drain(..sent);
            }
            // Closing before the handshake completes would abandon the connection instead of ending it.
            // A TLS client holds what it was given until its handshake is done.
            let tls_pending = client.tls.as_ref().is_some_and(|tls| tls.is_handshaking());
            if client.close_when_sent
                && client.outbox.is_empty()
                && client.wire_out.is_empty()
                && !tls_pending
                && socket.may_send()
            {
                socket.close();
            }
            while client.reading && socket.can_recv() {
                let mut wire = Vec::new();
                socket
                    .recv(|bytes| (bytes.len(), wire.extend_from_slice(bytes)))
                    .unwrap();
                match &mut client.tls {
                    Some(tls) => {
                        if client.tls_error.is_none() {
                            client.tls_error = read_tls(tls, &wire, &mut client.inbox).err();
                        }
                    }
                    None => client.inbox.extend_from_slice(&wire),
                }
            }
            // The server's FIN has arrived in any of these states.
            use tcp::State::{CloseWait, Closing, LastAck, TimeWait};
            if matches!(socket.state(), CloseWait | Closing | LastAck | TimeWait) {
                client.saw_eof = true;
            }
            if client.reading
                && client.close_on_eof
                && socket.state() == CloseWait
                && !socket.can_recv()
            {
                socket.close();
            }
        }
    }

    /// Polls the server alone, at the current time, without touching the rest of the bench.
    pub fn step_server_only(&mut self) -> net::PollOutcome {
        self.server
            .poll(self.now, &mut self.server_port, &mut self.handler)
    }

    /// The server's end of the link, for building another server on it.
    pub fn server_device(&mut self) -> &mut Port {
        &mut self.server_port
    }

    /// Steps until `done` holds, for at most `limit` of virtual time. Returns whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Steps for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    /// Steps until the client holds `count` responses (or its connection ends); returns them.
    pub fn await_responses(
        &mut self,
        client: usize,
        count: usize,
        limit: Duration,
    ) -> Vec<Response> {
        self.run_until(limit, |bench| {
            bench.clients[client].responses().len() >= count || bench.is_finished(client)
        });
        self.clients[client].responses()
    }

    /// Steps until the client's connection is over; returns everything it received, decoded.
    pub fn await_end(&mut self, client: usize, limit: Duration) -> Vec<Response> {
        let ended = self.run_until(limit, |bench| bench.is_finished(client));
        assert!(
            ended,
            "client {client} still {} after {limit}",
            self.state(client)
        );
        self.clients[client].responses()
    }

    /// Steps until no server slot is occupied.
    pub fn await_idle_server(&mut self, limit: Duration) {
        let idle = self.run_until(limit, |bench| bench.server.busy_connections() == 0);
        assert!(idle, "{} slots still busy", self.server.busy_connections());
    }

    /// One fresh client asks for model info and must get exactly [`INFO`] back.
    pub fn assert_serves_a_new_client(&mut self) {
        let client = self.connect_as(self.tls);
        self.send_request(client);
        self.close(client);
        let responses = self.await_end(client, Duration::from_secs(2));
        assert_eq!(responses, vec![Response::ModelInfo(INFO)]);
    }

    /// Puts a bare TCP SYN on the link, from a host that exists nowhere on it: the server's SYN-ACK (and its
    /// ARP query for that host) go unanswered, as in a SYN flood with spoofed sources.
    pub fn inject_syn(&mut self, source_port: u16) {
        let caps = ChecksumCapabilities::default();
        let ghost_ip = Ipv4Address::new(10, 0, 2, 99);
        let ghost_mac = EthernetAddress([0x02, 0, 0, 0, 0, 0x63]);
        let tcp = TcpRepr {
            src_port: source_port,
            dst_port: PORT,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1000),
            ack_number: None,
            window_len: 1024,
            window_scale: None,
            max_seg_size: Some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip_repr = Ipv4Repr {
            src_addr: ghost_ip,
            dst_addr: SERVER_IP,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut frame = vec![0; 14 + ip_repr.buffer_len() + tcp.buffer_len()];
        let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: ghost_mac,
            dst_addr: SERVER_MAC,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut ethernet);
        let mut ip = Ipv4Packet::new_unchecked(ethernet.payload_mut());
        ip_repr.emit(&mut ip, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(ip.payload_mut()),
            &ghost_ip.into(),
            &SERVER_IP.into(),
            &caps,
        );
        self.queues.borrow_mut()[SERVER_SIDE].push_back(frame);
    }

    /// Frames on the link right now, per direction.
    pub fn frames_in_flight(&self) -> usize {
        let queues = self.queues.borrow();
        queues[0].len() + queues[1].len()
    }
}

/// Feeds TLS records from the server to a rustls client and appends the plaintext to `inbox`.
fn read_tls(
    tls: &mut ClientConnection,
    mut wire: &[u8],
    inbox: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    while !wire.is_empty() {
        tls.read_tls(&mut wire)
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        tls.process_new_packets()?;
        let mut buf = [0u8; 4096];
        // Err(WouldBlock): nothing more decrypted yet; Ok(0): the server's close_notify.
        while let Ok(n @ 1..) = tls.reader().read(&mut buf) {
            inbox.extend_from_slice(&buf[..n]);
        }
    }
    Ok(())
}

/// A one-lease DHCPv4 server (RFC 2131 §3.1): answers DISCOVER with OFFER and REQUEST with ACK for
/// [`SERVER_IP`]/24, router [`CLIENT_IP`]. It sits on the link, taking the server's DHCP frames out of the
/// client's queue and putting its answers into the server's.
#[derive(Default)]
pub struct DhcpServer {
    pub offers: usize,
    pub acks: usize,
    /// When set, requests are ignored (no lease is handed out).
    pub silent: bool,
}

impl DhcpServer {
    fn serve(&mut self, queues: &Queues) {
        let mut queues = queues.borrow_mut();
        let mut kept = VecDeque::new();
        while let Some(frame) = queues[CLIENT_SIDE].pop_front() {
            match parse_dhcp(&frame) {
                Some(request) => {
                    if let Some(reply) = self.answer(&request) {
                        queues[SERVER_SIDE].push_back(reply);
                    }
                }
                None => kept.push_back(frame),
            }
        }
        queues[CLIENT_SIDE] = kept;
    }

    fn answer(&mut self, request: &DhcpRequest) -> Option<Vec<u8>> {
        if self.silent {
            return None;
        }
        let message_type = match request.message_type {
            DhcpMessageType::Discover => {
                self.offers += 1;
                DhcpMessageType::Offer
            }
            DhcpMessageType::Request => {
                self.acks += 1;
                DhcpMessageType::Ack
            }
            _ => return None,
        };
        let reply = DhcpRepr {
            message_type,
            transaction_id: request.transaction_id,
            secs: 0,
            client_hardware_address: request.client_hardware_address,
            client_ip: Ipv4Address::UNSPECIFIED,
            your_ip: SERVER_IP,
            server_ip: CLIENT_IP,
            router: Some(CLIENT_IP),
            subnet_mask: Some(Ipv4Address::new(255, 255, 255, 0)),
            relay_agent_ip: Ipv4Address::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(CLIENT_IP),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: Some(3600),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        Some(emit_dhcp(&reply))
    }
}

struct DhcpRequest {
    message_type: DhcpMessageType,
    transaction_id: u32,
    client_hardware_address: EthernetAddress,
}

/// The DHCP message in an Ethernet frame bound for UDP port 67, if it is one.
fn parse_dhcp(frame: &[u8]) -> Option<DhcpRequest> {
    let caps = ChecksumCapabilities::default();
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    let ip_repr = Ipv4Repr::parse(&ip, &caps).ok()?;
    if ip_repr.next_header != IpProtocol::Udp {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    UdpRepr::parse(
        &udp,
        &ip_repr.src_addr.into(),
        &ip_repr.dst_addr.into(),
        &caps,
    )
    .ok()?;
    if udp.dst_port() != 67 {
        return None;
    }
    let packet = DhcpPacket::new_checked(udp.payload()).ok()?;
    let repr = DhcpRepr::parse(&packet).ok()?;
    Some(DhcpRequest {
        message_type: repr.message_type,
        transaction_id: repr.transaction_id,
        client_hardware_address: repr.client_hardware_address,
    })
}

/// A DHCP reply broadcast from the DHCP server (at [`CLIENT_IP`]) to port 68.
fn emit_dhcp(reply: &DhcpRepr) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let dhcp_len = reply.buffer_len();
    let udp_len = 8 + dhcp_len;
    let ip_repr = Ipv4Repr {
        src_addr: CLIENT_IP,
        dst_addr: Ipv4Address::BROADCAST,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
    };
    let mut frame = vec![0; 14 + ip_repr.buffer_len() + udp_len];
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: CLIENT_MAC,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut ethernet);
    let mut ip = Ipv4Packet::new_unchecked(ethernet.payload_mut());
    ip_repr.emit(&mut ip, &caps);
    let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
    UdpRepr {
        src_port: 67,
        dst_port: 68,
    }
    .emit(
        &mut udp,
        &CLIENT_IP.into(),
        &Ipv4Address::BROADCAST.into(),
        dhcp_len,
        |payload| reply.emit(&mut DhcpPacket::new_unchecked(payload)).unwrap(),
        &caps,
    );
    frame
}

/// The bench's DHCP server, when the server runs with `ip=dhcp`.
impl Bench {
    pub fn dhcp(&mut self) -> &mut DhcpServer {
        self.dhcp.as_mut().expect("bench runs without DHCP")
    }
}
