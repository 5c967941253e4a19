//! The appliance's network server: one smoltcp interface, its IPv4 setup (DHCPv4 or static), and a fixed
//! pool of TCP connection slots answering protocol frames through a [`Handler`] (docs/ARCHITECTURE.md §1, §5).
//!
//! The kernel supplies a `smoltcp::phy::Device`, the current time and a handler; nothing here reads a clock
//! or touches hardware (STYLE 2, 3). DHCPv4 follows RFC 2131 as smoltcp's client implements it: each
//! lease's address replaces the interface's address and its router becomes the default route.
//!
//! Generations stream fairly: a request the [`Handler`] answers with [`Reply::Streaming`] makes its slot
//! a streaming slot, and each [`Server::poll`] calls [`Handler::step`] at most once for each streaming
//! slot, round-robin from a start that rotates from poll to poll, and only for slots whose previous frame
//! the socket has taken (a client that does not read gets no compute, and is aborted once it has taken
//! nothing for `frame_timeout`). While any slot can step, [`PollOutcome`] reports activity and a zero
//! `poll_delay`: the caller must poll again at once instead of waiting for a packet.
//!
//! Capacity: the pool has `Limits::connections` slots; how many generations run at once is the handler's
//! business (it answers `Generate` with `Error(Busy)` when its sessions are all taken). Connections beyond
//! the pool are refused at once by smoltcp with RST (no socket listens for them), never left hanging; a
//! slot returns to listening as soon as its client is done, times out or is aborted (see
//! [`crate::connection`]). With [`Limits::evict_idle`] a full pool resets its least advanced idle
//! connection so that one slot listens again, and a storm of half-open or silent connections cannot keep
//! a working client out; [`Limits::request_caps`] and [`Limits::lifetime`] bound what a connection that
//! does talk may hold (docs/ARCHITECTURE.md §5).

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Device, Medium};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use crate::config::{Ipv4Setup, NetConfig};
use crate::connection::{Connection, SlotContext};
use crate::proto::{ChannelBinding, Request, Response};
use crate::tls::TlsServer;

/// The appliance behind the server: answers requests and runs generations, one per connection slot.
///
/// Called from [`Server::poll`]; no packet moves while it runs, so each call should be short (one TPM
/// command, one prefill chunk or one decode step).
///
/// The server keeps the protocol's stream rules, so the handler need not: it never sees
/// [`Request::Cancel`] (a cancel of a running generation becomes [`Handler::stop`] and the server answers
/// `Error(Cancelled)`; one with nothing running is ignored), and it never gets a request for a slot
/// while that slot's generation runs (such a request ends the generation and the connection).
pub trait Handler {
    /// Answers one request from the client in connection slot `slot` (`0..Limits::connections`).
    /// `binding` is the TLS session the request came on (`None` on a plaintext server, which only tests
    /// build); an attest request needs it for the quote's qualifying data (docs/ARCHITECTURE.md §4).
    ///
    /// [`Reply::Streaming`] starts a generation for `slot`: the server then calls [`Handler::step`] for it,
    /// interleaved fairly with every other streaming slot, until a step returns [`Step::Final`] or the
    /// server calls [`Handler::stop`].
    fn handle(&mut self, slot: usize, request: &Request, binding: Option<&ChannelBinding>)
        -> Reply;

    /// Advances the generation of `slot` by one unit of work (a prefill chunk or one decode step).
    fn step(&mut self, slot: usize) -> Step;

    /// Ends the generation of `slot` early and frees what it holds: the client cancelled, disconnected,
    /// stopped reading, or broke the protocol. Called at most once per started generation, never after
    /// `step` returned [`Step::Final`].
    fn stop(&mut self, slot: usize);

    /// Called at the start of every [`Server::poll`], before any request or step of that poll. Each poll steps
    /// each streaming slot at most once, so a handler that does at most one unit of other work per poll
    /// (one TPM request, say) delays no generation by more than that between two of its steps.
    fn poll_started(&mut self) {}
}

/// What [`Handler::handle`] does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// One response frame; the connection waits for the next request.
    Response(Response),
    /// A generation started; its frames come from [`Handler::step`].
    Streaming,
    /// Not now: the handler will not do this work yet (the TPM's rate limit, docs/ARCHITECTURE.md §5). The
    /// server keeps the request and offers it again on a later poll, at most [`DEFER_RETRY`] later; the
    /// client's frame deadline does not run meanwhile (the wait is ours, not the client's).
    Defer,
}

/// How long a deferred request waits at most before the server offers it to the handler again.
pub const DEFER_RETRY: Duration = Duration::from_millis(1);

/// The outcome of one [`Handler::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Work was done but there is nothing to send yet (a prefill chunk).
    Pending,
    /// A frame of the stream (a token); more follow.
    Frame(Response),
    /// The last frame of the stream (`Done` or an error); the generation's resources are already free.
    Final(Response),
}

/// Sizes and timeouts of the connection pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections (TCP sockets listening on the port).
    pub connections: usize,
    /// Bytes of each socket's receive buffer (also the TCP window it advertises).
    pub rx_buffer: usize,
    /// Bytes of each socket's send buffer; longer responses are fed in across polls.
    pub tx_buffer: usize,
    /// Time a client has for each step: to complete a request frame, or to take a response. While a
    /// generation streams, the client is not timed while it waits for tokens; it still has this long to
    /// take each queued frame (or the connection is aborted) and to complete any frame it starts.
    pub frame_timeout: Duration,
    /// Time a closing connection has to finish its FIN exchange before it is aborted.
    pub close_timeout: Duration,
    /// The longest a connection may stay, counted from its SYN: once it has passed, the client's next
    /// request (or the end of its running generation) is answered `Error(Timeout)` and the connection
    /// closed. `None`: no cap.
    pub lifetime: Option<Duration>,
    /// `Attest` and `ActivateCredential` are answered at most once per connection, and `ModelInfo` at most
    /// once before the connection's first generation started; one more is answered `Error(BadRequest)`
    /// and the connection closed. A verifying client needs one attest and one activation; a client that
    /// never generates cannot hold its slot by asking again and again, and TPM work per connection is
    /// bounded.
    pub request_caps: bool,
    /// When every slot is taken, the connection least far along that has had no request answered yet
    /// (the oldest half-open or silent one first, then the oldest that sent bytes without an answer yet)
    /// is reset so that a slot listens again: a storm of idle connections cannot keep a working client
    /// out.
    pub evict_idle: bool,
}

impl Default for Limits {
    /// The plain pool the layer's own tests start from: no lifetime, no request caps, no eviction. The
    /// appliance's limits come from `crate::serving::ApplianceConfig`, which turns all three on.
    fn default() -> Self {
        Self {
            connections: 4,
            rx_buffer: 8 * 1024,
            tx_buffer: 8 * 1024,
            frame_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            lifetime: None,
            request_caps: false,
            evict_idle: false,
        }
    }
}

/// The largest pool [`Server::with_tls`] accepts; each slot costs two socket buffers.
pub const MAX_CONNECTIONS: usize = 64;

/// The longest timeout [`Server::with_tls`] accepts (keeps deadline arithmetic far from overflow).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Why a server could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerError {
    /// The device is not an Ethernet device.
    NotEthernet,
    /// The MAC address is not a unicast address.
    BadMac,
    /// Port 0 cannot be listened on.
    BadPort,
    /// `connections` is 0 or above [`MAX_CONNECTIONS`], a socket buffer is empty, or a timeout is over
    /// [`MAX_TIMEOUT`].
    BadLimits,
}

/// What happened during one [`Server::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollOutcome {
    /// Packets changed some socket's state, a request was answered, a lease changed, a slot moved on, or
    /// a generation is ready for its next step. When true, poll again at once; when false, polling again
    /// before `poll_delay` passes or a packet arrives does nothing.
    pub activity: bool,
    /// How long the caller may wait for a packet before polling again (smoltcp's timers and our
    /// connection deadlines together). `None`: nothing is due until a packet arrives. Zero while a
    /// generation can take its next step.
    pub poll_delay: Option<Duration>,
    /// Generations running after this poll. Those whose client has not yet taken the last frame wait for
    /// its ACKs (a packet) and do not keep `poll_delay` at zero; the rest do.
    pub streaming: usize,
}

/// Running totals, for the kernel's status reporting and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections that completed the handshake and got a slot.
    pub accepted: u64,
    /// Connections that took a slot (a SYN answered, or a handshake found complete).
    pub arrivals: u64,
    /// Requests decoded: passed to the handler, or cancels (which the server carries out itself).
    pub requests: u64,
    /// Frames whose body was not a request, or that announced an empty body (answered `BadFrame`).
    pub bad_frames: u64,
    /// Frame headers over the maximum length (answered `TooLarge`).
    pub too_large: u64,
    /// Clients that did not complete a frame in time (answered `Timeout`).
    pub timeouts: u64,
    /// Connections the peer ended in the middle of a frame.
    pub truncated: u64,
    /// Connections that the peer reset, or that smoltcp dropped after retransmissions went unanswered.
    pub reset: u64,
    /// Connections we aborted: the client stopped reading, or did not finish closing in time.
    pub aborted: u64,
    /// Handler responses too large to encode in one frame (the connection was closed instead).
    pub unsendable: u64,
    /// DHCP leases applied to the interface (first lease and every change).
    pub leases: u64,
    /// Connections ended by a TLS failure (not TLS, a refused handshake, a bad record); each got an alert.
    pub tls_failures: u64,
    /// Generations started (the handler answered [`Reply::Streaming`]). Each one ends in exactly one of
    /// `streams_finished`, `cancels` or `streams_stopped`, or is still running ([`Server::streaming`]).
    pub streams: u64,
    /// Generations that ended with the handler's [`Step::Final`].
    pub streams_finished: u64,
    /// Generations the client cancelled (answered `Cancelled`).
    pub cancels: u64,
    /// Generations the server stopped because the connection ended under them: EOF, reset, a client
    /// that stopped reading or dribbled a frame, a protocol violation, a bad frame or TLS failure.
    pub streams_stopped: u64,
    /// Frames produced by [`Handler::step`] and queued for their clients (tokens and final frames).
    pub stream_frames: u64,
    /// Requests other than `Cancel` while a generation ran (answered `BadRequest`, then closed).
    pub violations: u64,
    /// Requests over the connection's caps (`Limits::request_caps`; answered `BadRequest`, then closed).
    pub over_cap: u64,
    /// Connections closed because they reached `Limits::lifetime` (answered `Timeout`).
    pub expired: u64,
    /// Idle connections reset to make room for a new one (`Limits::evict_idle`).
    pub evicted: u64,
    /// Times a request was deferred by the handler ([`Reply::Defer`]) and kept for a later poll.
    pub deferrals: u64,
}

/// The network side of the appliance.
pub struct Server {
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    /// Slot `i` serves on the TCP socket `tcp_handles[i]`.
    tcp_handles: Vec<SocketHandle>,
    connections: Vec<Connection>,
    mac: EthernetAddress,
    address: Option<Ipv4Cidr>,
    gateway: Option<Ipv4Address>,
    port: u16,
    limits: Limits,
    counters: Counters,
    /// Every connection speaks TLS through this when set (the appliance); plaintext frames otherwise.
    tls: Option<TlsServer>,
    /// The slot the next round of generation steps starts from (rotates so no slot is always first).
    step_start: usize,
}

impl Server {
    /// A plaintext server with the default [`Limits`], for tests of the layers under TLS only: the appliance
    /// never serves without TLS, so this constructor does not exist outside `net`'s tests and the
    /// `plaintext-for-tests` feature.
    ///
    /// `random_seed` seeds smoltcp's TCP initial sequence numbers, ephemeral ports and DHCP transaction
    /// ids; it should differ on every boot.
    #[cfg(any(test, feature = "plaintext-for-tests"))]
    pub fn new<D: Device + ?Sized>(
        config: NetConfig,
        mac: EthernetAddress,
        device: &mut D,
        now: Instant,
        random_seed: u64,
    ) -> Result<Self, ServerError> {
        Self::with_limits(config, Limits::default(), mac, device, now, random_seed)
    }

    /// A server whose connections all speak TLS 1.3 (`tls` holds the boot-time identity), with explicit
    /// pool sizes and timeouts.
    pub fn with_tls<D: Device + ?Sized>(
        config: NetConfig,
        limits: Limits,
        mac: EthernetAddress,
        device: &mut D,
        now: Instant,
        random_seed: u64,
        tls: TlsServer,
    ) -> Result<Self, ServerError> {
        let mut server = Self::build(config, limits, mac, device, now, random_seed)?;
        server.tls = Some(tls);
        Ok(server)
    }

    /// A plaintext server with explicit pool sizes and timeouts (tests only, as [`Server::new`]).
    #[cfg(any(test, feature = "plaintext-for-tests"))]
    pub fn with_limits<D: Device + ?Sized>(
        config: NetConfig,
        limits: Limits,
        mac: EthernetAddress,
        device: &mut D,
        now: Instant,
        random_seed: u64,
    ) -> Result<Self, ServerError> {
        Self::build(config, limits, mac, device, now, random_seed)
    }

    /// Checks the settings and builds the interface and the connection pool, without TLS yet.
    fn build<D: Device + ?Sized>(
        config: NetConfig,
        limits: Limits,
        mac: EthernetAddress,
        device: &mut D,
        now: Instant,
        random_seed: u64,
    ) -> Result<Self, ServerError> {
        // smoltcp asserts both of these; check them first so bad input is an error, not a panic.
        if device.capabilities().medium != Medium::Ethernet {
            return Err(ServerError::NotEthernet);
        }
        if !mac.is_unicast() {
            return Err(ServerError::BadMac);
        }
        if config.port == 0 {
            return Err(ServerError::BadPort);
        }
        if limits.connections == 0
            || limits.connections > MAX_CONNECTIONS
            || limits.rx_buffer == 0
            || limits.tx_buffer == 0
            || limits.frame_timeout > MAX_TIMEOUT
            || limits.close_timeout > MAX_TIMEOUT
            || limits
                .lifetime
                .is_some_and(|lifetime| lifetime > MAX_TIMEOUT)
        {
            return Err(ServerError::BadLimits);
        }

        let mut iface_config = Config::new(HardwareAddress::Ethernet(mac));
        iface_config.random_seed = random_seed;
        let iface = Interface::new(iface_config, device, now);
        let mut server = Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dhcp: None,
            tcp_handles: Vec::with_capacity(limits.connections),
            connections: Vec::with_capacity(limits.connections),
            mac,
            address: None,
            gateway: None,
            port: config.port,
            limits,
            counters: Counters::default(),
            tls: None,
            step_start: 0,
        };
        match config.ipv4 {
            Ipv4Setup::Dhcp => server.dhcp = Some(server.sockets.add(dhcpv4::Socket::new())),
            Ipv4Setup::Static { address, gateway } => server.set_ipv4(Some(address), gateway),
        }
        for _ in 0..limits.connections {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; limits.rx_buffer]),
                tcp::SocketBuffer::new(vec![0; limits.tx_buffer]),
            );
            // No smoltcp timeout: it counts from the peer's last packet in every state and would race the
            // connection's own deadlines, which already bound every phase (see `crate::connection`).
            // Responses are whole frames handed over at once; Nagle would only delay their last segment.
            socket.set_nagle_enabled(false);
            // The port is nonzero and the socket fresh, the only two reasons `listen` fails.
            let _ = socket.listen(config.port);
            server.tcp_handles.push(server.sockets.add(socket));
            server.connections.push(Connection::listening());
        }
        Ok(server)
    }

    /// Moves packets, applies DHCP leases, advances every connection, and steps each generation whose
    /// client has taken its previous frame once. Call it whenever the device has received something,
    /// whenever it reports `activity` (at once: a generation is waiting for its next step, or a request
    /// is waiting behind a cancel), and otherwise no later than `poll_delay` after the previous call.
    pub fn poll<D: Device + ?Sized, H: Handler + ?Sized>(
        &mut self,
        now: Instant,
        device: &mut D,
        handler: &mut H,
    ) -> PollOutcome {
        handler.poll_started();
        let mut activity =
            self.iface.poll(now, device, &mut self.sockets) == PollResult::SocketStateChanged;
        activity |= self.poll_dhcp();

        let mut serviced = false;
        for (slot, (connection, &handle)) in self
            .connections
            .iter_mut()
            .zip(&self.tcp_handles)
            .enumerate()
        {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            serviced |= connection.service(
                socket,
                SlotContext {
                    slot,
                    port: self.port,
                    now,
                    limits: &self.limits,
                    tls: self.tls.as_ref(),
                    handler,
                    counters: &mut self.counters,
                },
            );
        }
        serviced |= self.evict_if_full();
        serviced |= self.step_generations(now, handler);
        if serviced {
            // Send the answers (and any RST from an abort) now rather than on the next call.
            self.iface.poll(now, device, &mut self.sockets);
            for (connection, &handle) in self.connections.iter_mut().zip(&self.tcp_handles) {
                connection.finish_abort(self.sockets.get_mut::<tcp::Socket>(handle), self.port);
            }
        }
        activity |= serviced;

        let mut poll_delay = self.iface.poll_delay(now, &self.sockets);
        for deadline in self
            .connections
            .iter()
            .filter_map(|connection| connection.deadline(&self.limits))
        {
            let until = if deadline > now {
                deadline - now
            } else {
                Duration::ZERO
            };
            poll_delay = Some(poll_delay.map_or(until, |delay| delay.min(until)));
        }
        if self.connections.iter().any(Connection::is_deferred) {
            poll_delay = Some(poll_delay.map_or(DEFER_RETRY, |delay| delay.min(DEFER_RETRY)));
        }
        if self.connections.iter().any(Connection::wants_step) {
            // Compute is waiting; sleeping until a packet or timer would stall the stream.
            activity = true;
            poll_delay = Some(Duration::ZERO);
        }
        PollOutcome {
            activity,
            poll_delay,
            streaming: self.streaming(),
        }
    }

    /// With `Limits::evict_idle`, keeps a slot listening while any slot holds a connection that has had no
    /// request answered: when none listens, the least advanced such connection is reset (see
    /// [`Limits::evict_idle`]). Returns whether a connection was evicted.
    fn evict_if_full(&mut self) -> bool {
        if !self.limits.evict_idle || self.connections.iter().any(|c| !c.is_busy()) {
            return false;
        }
        // The newest connection is never evicted: there is no newer arrival it would make room for (and a
        // pool whose other connections are all protected keeps it, refusing the next SYN instead).
        let newest = self
            .connections
            .iter()
            .map(Connection::arrival)
            .max()
            .unwrap_or(0);
        let Some(slot) = (0..self.connections.len())
            .filter_map(|slot| {
                let rank = self.connections[slot].eviction_rank()?;
                (rank.2 < newest).then_some((rank, slot))
            })
            .min()
            .map(|(_, slot)| slot)
        else {
            return false;
        };
        self.counters.evicted += 1;
        let socket = self.sockets.get_mut::<tcp::Socket>(self.tcp_handles[slot]);
        self.connections[slot].evict(socket);
        true
    }

    /// One round of generation steps: each streaming slot whose client has taken its previous frame gets
    /// one [`Handler::step`], in slot order starting from `step_start`. The next round starts after this
    /// round's first slot, so with streams in slots 0 and 1 the order alternates 0,1 / 1,0 / 0,1.
    /// Returns whether any step ran.
    fn step_generations<H: Handler + ?Sized>(&mut self, now: Instant, handler: &mut H) -> bool {
        let count = self.connections.len();
        let mut first = None;
        for offset in 0..count {
            let slot = (self.step_start + offset) % count;
            let connection = &mut self.connections[slot];
            if !connection.wants_step() {
                continue;
            }
            first.get_or_insert(slot);
            let socket = self.sockets.get_mut::<tcp::Socket>(self.tcp_handles[slot]);
            connection.step(slot, socket, now, &self.limits, handler, &mut self.counters);
        }
        match first {
            Some(slot) => {
                self.step_start = (slot + 1) % count;
                true
            }
            None => false,
        }
    }

    /// The interface's IPv4 address and prefix; `None` until DHCP has a lease.
    pub fn ipv4_cidr(&self) -> Option<Ipv4Cidr> {
        self.address
    }

    /// The default gateway in use, if any.
    pub fn gateway(&self) -> Option<Ipv4Address> {
        self.gateway
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// Slots currently occupied by a client (serving or closing).
    pub fn busy_connections(&self) -> usize {
        self.connections
            .iter()
            .filter(|connection| connection.is_busy())
            .count()
    }

    /// Generations running now (slots between `Reply::Streaming` and their final frame or stop).
    pub fn streaming(&self) -> usize {
        self.connections
            .iter()
            .filter(|connection| connection.is_streaming())
            .count()
    }

    /// Running totals since the server was built.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Applies a DHCP event, if the DHCP client has one. Returns whether the interface changed.
    fn poll_dhcp(&mut self) -> bool {
        let Some(handle) = self.dhcp else {
            return false;
        };
        let lease = match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            None => return false,
            Some(dhcpv4::Event::Configured(lease)) => Some((lease.address, lease.router)),
            Some(dhcpv4::Event::Deconfigured) => None,
        };
        match lease {
            Some((address, router)) => {
                self.counters.leases += 1;
                self.set_ipv4(Some(address), router);
            }
            None => self.set_ipv4(None, None),
        }
        true
    }

    /// Replaces the interface's IPv4 address and default route. Connections bound to an address that goes
    /// away are reset by smoltcp on their next transmission.
    fn set_ipv4(&mut self, address: Option<Ipv4Cidr>, gateway: Option<Ipv4Address>) {
        self.iface.update_ip_addrs(|addresses| {
            addresses.clear();
            if let Some(address) = address {
                // The list was just emptied and holds at least one entry, so this push cannot fail.
                let _ = addresses.push(IpCidr::Ipv4(address));
            }
        });
        self.address = address;
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        self.gateway = None;
        if let Some(gateway) = gateway {
            // The default route was just removed, so the table has room for it.
            if routes.add_default_ipv4_route(gateway).is_ok() {
                self.gateway = Some(gateway);
            }
        }
    }
}
