//! One connection slot: a TCP socket's life from listening through serving frames to closing (docs/ARCHITECTURE.md §5).
//!
//! Each slot owns one smoltcp TCP socket (RFC 9293 states as smoltcp implements them) plus what the
//! protocol needs on top: a [`FrameDecoder`] for the request stream, an outgoing buffer that is drained
//! into the socket across polls (so a response larger than the socket's send buffer still goes out whole),
//! and deadlines. The deadlines are per protocol step, not per byte: a client has `frame_timeout` to
//! complete each request frame and to take each response, so dribbling bytes cannot hold a slot forever.
//!
//! A request the handler answers with [`Reply::Streaming`] puts the slot into its streaming phase: the
//! server ([`crate::server::Server::poll`]) then calls [`Connection::step`] for it at most once per poll,
//! and only while the previous frame is with the socket (a client that does not read gets no compute).
//! While streaming, the client is not idle-timed (it waits for tokens); it has `frame_timeout` to take each
//! frame and to complete any frame it starts, and the only request it may send is `Cancel`. Every path that
//! ends a running generation early (cancel, EOF, reset, timeout, abort, bad input) calls [`Handler::stop`]
//! exactly once, through [`Connection::stop_generation`]; a generation that ended with `Step::Final` is
//! never stopped.
//!
//! Closing is bounded too: after our FIN the peer has `close_timeout` to finish, after which the socket is
//! aborted (RST). Every path ends with the socket listening again.
//!
//! What a client may hold (docs/ARCHITECTURE.md §5): with `Limits::lifetime` a connection is closed with
//! `Error(Timeout)` at its first request boundary after that long; with `Limits::request_caps` `Attest` and
//! `ActivateCredential` are answered once per connection and `ModelInfo` once before the connection's first
//! generation; with `Limits::evict_idle` the server may reset a connection that has had no request answered
//! ([`Connection::eviction_rank`]; an ignored `Cancel` is no answer). A request the handler defers ([`Reply::Defer`]) stays in the frame
//! decoder and is offered again on the next poll.

use alloc::vec::Vec;

use smoltcp::socket::tcp::{Socket, State};
use smoltcp::time::{Duration, Instant};

use crate::frame::{FrameDecoder, FrameError};
use crate::proto::{ChannelBinding, ErrorCode, Request, Response};
use crate::server::{Counters, Handler, Limits, Reply, Step};
use crate::tls::{TlsError, TlsServer, TlsSession};

/// smoltcp's default delayed-ACK time (RFC 9293 §3.8.6.3 allows up to 500 ms), restored on each new
/// connection so that an answer can carry the ACK of its request.
const ACK_DELAY: Duration = Duration::from_millis(10);

/// Where a slot is in its cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The socket listens; there is no client yet.
    Listening,
    /// A SYN arrived and our SYN-ACK is out; the client has until the deadline to complete the handshake.
    Handshake,
    /// A client is connected and nothing is generating; requests are read and answered in order.
    Serving,
    /// The handler runs a generation for this client; the server steps it while the client takes its
    /// frames. `Cancel` is the only request allowed.
    Streaming,
    /// We are done with the client: drain what is queued, send FIN, wait for the peer to finish.
    Closing { fin_queued: bool },
    /// The socket was aborted; its RST leaves on the next interface poll, then it listens again.
    Aborted,
}

/// What one slot is serviced with on this poll: its index, the server's port, limits, TLS identity and
/// counters, the time, and the handler that answers requests and runs generations.
pub(crate) struct SlotContext<'a, H: ?Sized> {
    /// The slot's index, as the handler knows it.
    pub(crate) slot: usize,
    /// The listening port, for re-arming the socket.
    pub(crate) port: u16,
    /// This poll's time.
    pub(crate) now: Instant,
    /// Deadlines and sizes.
    pub(crate) limits: &'a Limits,
    /// The TLS identity, when the server speaks TLS.
    pub(crate) tls: Option<&'a TlsServer>,
    /// Answers requests and runs generations.
    pub(crate) handler: &'a mut H,
    /// The server's event counters.
    pub(crate) counters: &'a mut Counters,
}

/// A connection slot bound to one TCP socket of the server's socket set.
#[derive(Debug)]
pub(crate) struct Connection {
    phase: Phase,
    decoder: FrameDecoder,
    /// Encoded response frames not yet handed to the socket; `outgoing[sent..]` is what remains.
    outgoing: Vec<u8>,
    sent: usize,
    /// When the current step (receive a frame, hand over a response, or finish closing) must be done.
    /// Not used while streaming, which has the two deadlines below instead.
    deadline: Instant,
    /// Streaming: when the request frame the client has started must be complete (`None`: none started).
    frame_deadline: Option<Instant>,
    /// Streaming: when the queued frame must be with the socket (`None`: nothing is queued).
    send_deadline: Option<Instant>,
    /// The client's TLS session, from the end of its TCP handshake until the slot listens again. `None` on
    /// a plaintext server (tests only) and while listening.
    tls: Option<TlsSession>,
    /// One encoded response frame on its way into the TLS session (reused across responses).
    frame: Vec<u8>,
    /// When the client's SYN (or its completed handshake, if we saw no SYN) arrived.
    since: Instant,
    /// The server's `Counters::arrivals` when this connection arrived: orders arrivals within one poll.
    arrival: u64,
    /// Whether the client has sent any byte on the connection.
    received: bool,
    /// Requests answered on this connection (an ignored `Cancel` is not answered).
    answered: u64,
    /// The capped requests already answered (`Limits::request_caps`).
    capped: CappedRequests,
    /// The decoder holds a complete request that the handler deferred.
    deferred: bool,
}

/// Which of the requests `Limits::request_caps` allows once per connection have been answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CappedRequests {
    model_info: bool,
    attest: bool,
    activate: bool,
    /// A generation has started on the connection: model info is no longer capped.
    generated: bool,
}

impl CappedRequests {
    /// The flag of `request`'s kind, if that kind is capped (model info only until a generation started).
    fn flag(&mut self, request: &Request) -> Option<&mut bool> {
        match request {
            Request::ModelInfo if self.generated => None,
            Request::ModelInfo => Some(&mut self.model_info),
            Request::Attest { .. } => Some(&mut self.attest),
            Request::ActivateCredential { .. } => Some(&mut self.activate),
            Request::Generate(_) | Request::Cancel => None,
        }
    }
}

/// Why reading from a client stopped.
enum ReceiveError {
    Frame(FrameError),
    Tls,
}

impl Connection {
    /// A slot whose socket has just been put into the listening state.
    pub(crate) fn listening() -> Self {
        Self {
            phase: Phase::Listening,
            decoder: FrameDecoder::new(),
            outgoing: Vec::new(),
            sent: 0,
            deadline: Instant::ZERO,
            frame_deadline: None,
            send_deadline: None,
            tls: None,
            frame: Vec::new(),
            since: Instant::ZERO,
            arrival: 0,
            received: false,
            answered: 0,
            capped: CappedRequests::default(),
            deferred: false,
        }
    }

    /// The instant at which this slot needs a poll even if no packet arrives.
    pub(crate) fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match self.phase {
            Phase::Serving => Some(match limits.lifetime {
                Some(lifetime) => self.deadline.min(self.since + lifetime),
                None => self.deadline,
            }),
            Phase::Handshake | Phase::Closing { .. } => Some(self.deadline),
            Phase::Streaming => match (self.frame_deadline, self.send_deadline) {
                (Some(frame), Some(send)) => Some(frame.min(send)),
                (frame, send) => frame.or(send),
            },
            Phase::Listening | Phase::Aborted => None,
        }
    }

    /// True while a generation runs for this slot (from `Reply::Streaming` until its final frame or its
    /// [`Handler::stop`]).
    pub(crate) fn is_streaming(&self) -> bool {
        self.phase == Phase::Streaming
    }

    /// True when the generation may take its next step: it runs, and everything queued for the client so
    /// far is with the socket (back-pressure: a client that does not read gets no compute).
    pub(crate) fn wants_step(&self) -> bool {
        self.is_streaming() && !self.has_outgoing()
    }

    /// True while a client occupies this slot (from its SYN until the slot listens again).
    pub(crate) fn is_busy(&self) -> bool {
        self.phase != Phase::Listening
    }

    /// The order of the client's arrival among all connections (meaningless while listening).
    pub(crate) fn arrival(&self) -> u64 {
        self.arrival
    }

    /// True while the decoder holds a request the handler deferred ([`Reply::Defer`]).
    pub(crate) fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// How readily this connection is reset to make room (`Limits::evict_idle`): lower goes first, and
    /// `None` for a connection that may not be evicted (listening, closing, generating, or one that has had
    /// a request answered or deferred). Silent connections (a half-open handshake, or an established one
    /// that sent nothing) rank 0, connections that sent bytes (a TLS handshake under way, a partial frame)
    /// but have no answer yet rank 1; within a rank the oldest goes first, so a client that has just
    /// connected has the most time to send its first bytes.
    pub(crate) fn eviction_rank(&self) -> Option<(u8, Instant, u64)> {
        let rank = match self.phase {
            Phase::Handshake => 0,
            Phase::Serving if self.answered == 0 && !self.deferred => u8::from(self.received),
            _ => return None,
        };
        Some((rank, self.since, self.arrival))
    }

    /// Resets the connection to make room for another (`Limits::evict_idle`); the slot listens again
    /// after the next interface poll, as after any abort.
    pub(crate) fn evict(&mut self, socket: &mut Socket<'_>) {
        self.abort(socket);
    }

    /// Advances the slot as far as the socket allows. Returns whether anything happened.
    pub(crate) fn service<H: Handler + ?Sized>(
        &mut self,
        socket: &mut Socket<'_>,
        context: SlotContext<'_, H>,
    ) -> bool {
        match self.phase {
            Phase::Listening | Phase::Handshake => self.service_listening(
                socket,
                context.port,
                context.now,
                context.limits,
                context.tls,
                context.counters,
            ),
            Phase::Serving => self.service_serving(socket, context),
            Phase::Streaming => self.service_streaming(socket, context),
            Phase::Closing { fin_queued } => self.service_closing(
                socket,
                context.port,
                context.now,
                fin_queued,
                context.counters,
            ),
            // Aborted slots are re-armed by `finish_abort` after the interface has sent the RST.
            Phase::Aborted => false,
        }
    }

    /// Puts an aborted slot's socket back into the listening state. Call after an interface poll, so the
    /// RST that `abort` queued has had its chance to leave (listening forgets the old peer).
    pub(crate) fn finish_abort(&mut self, socket: &mut Socket<'_>, port: u16) {
        if self.phase == Phase::Aborted {
            self.relisten(socket, port);
        }
    }

    fn service_listening(
        &mut self,
        socket: &mut Socket<'_>,
        port: u16,
        now: Instant,
        limits: &Limits,
        tls: Option<&TlsServer>,
        counters: &mut Counters,
    ) -> bool {
        match socket.state() {
            State::Listen if self.phase == Phase::Listening => false,
            // The handshake was reset by the client; smoltcp went back to listening.
            State::Listen => {
                self.phase = Phase::Listening;
                true
            }
            State::SynReceived if self.phase == Phase::Listening => {
                self.phase = Phase::Handshake;
                self.deadline = now + limits.frame_timeout;
                self.arrive(now, counters);
                true
            }
            State::SynReceived if now >= self.deadline => {
                // A SYN whose sender never completes the handshake (lost, spoofed or a SYN flood).
                counters.aborted += 1;
                self.abort(socket);
                true
            }
            State::SynReceived => false,
            // CloseWait: the client sent its request and FIN before we looked; serve it all the same.
            State::Established | State::CloseWait => {
                if let Some(server) = tls {
                    match server.session() {
                        Ok(session) => self.tls = Some(session),
                        Err(_) => {
                            counters.tls_failures += 1;
                            self.abort(socket);
                            return true;
                        }
                    }
                }
                counters.accepted += 1;
                if self.phase == Phase::Listening {
                    // The whole handshake happened between two polls.
                    self.arrive(now, counters);
                }
                self.phase = Phase::Serving;
                self.deadline = now + limits.frame_timeout;
                true
            }
            // The socket closed (a reset during the handshake) or is in a state no listener should be in.
            _ => {
                self.relisten(socket, port);
                true
            }
        }
    }

    fn service_serving<H: Handler + ?Sized>(
        &mut self,
        socket: &mut Socket<'_>,
        context: SlotContext<'_, H>,
    ) -> bool {
        let SlotContext {
            slot,
            port,
            now,
            limits,
            tls,
            handler,
            counters,
        } = context;
        if socket.state() == State::Closed {
            // The peer reset the connection, or smoltcp gave up on it.
            counters.reset += 1;
            self.relisten(socket, port);
            return true;
        }
        if self.has_expired(now, limits) {
            // What is queued goes out first; a deferred request is dropped unanswered.
            counters.expired += 1;
            self.close_with(
                socket,
                Some(Response::Error(ErrorCode::Timeout)),
                now,
                limits,
            );
            return true;
        }
        let mut progress = false;
        loop {
            let had_outgoing = self.has_outgoing();
            if self.flush(socket) {
                progress = true;
                if had_outgoing && !self.has_outgoing() {
                    // The response is handed over; the next request gets a fresh step.
                    self.deadline = now + limits.frame_timeout;
                }
            }
            // Answer requests one at a time: a client that does not read its answers stalls here, and TCP
            // flow control then holds back its further requests instead of our memory growing.
            if self.has_outgoing() {
                break;
            }
            match self.receive(socket) {
                Ok(0) => {
                    // The handshake flight, or an answer rustls owes (key update), goes out first.
                    if self.has_outgoing() {
                        continue;
                    }
                    // A deferred request is still in the decoder: offer it again.
                    if self.decoder.frame().is_none() {
                        break;
                    }
                }
                Ok(_) => progress = true,
                Err(ReceiveError::Tls) => {
                    // Not TLS, or TLS we refuse: the session's fatal alert is already queued.
                    counters.tls_failures += 1;
                    self.close_with(socket, None, now, limits);
                    return true;
                }
                Err(ReceiveError::Frame(error)) => {
                    let code = frame_error_code(error, counters);
                    self.close_with(socket, Some(Response::Error(code)), now, limits);
                    return true;
                }
            }
            let Some(body) = self.decoder.frame() else {
                continue;
            };
            let request = Request::parse(body);
            self.deadline = now + limits.frame_timeout;
            let request = match request {
                Ok(request) => request,
                Err(_) => {
                    self.decoder.consume();
                    counters.bad_frames += 1;
                    self.close_with(
                        socket,
                        Some(Response::Error(ErrorCode::BadFrame)),
                        now,
                        limits,
                    );
                    return true;
                }
            };
            if matches!(request, Request::Cancel) {
                // Nothing is generating: a cancel that raced the stream's last frame (proto: no answer).
                self.take_request(&request, counters);
                continue;
            }
            if limits.request_caps && self.capped.flag(&request).is_some_and(|used| *used) {
                // The second of a kind answered once per connection: the client is holding its slot.
                self.take_request(&request, counters);
                counters.over_cap += 1;
                self.close_with(
                    socket,
                    Some(Response::Error(ErrorCode::BadRequest)),
                    now,
                    limits,
                );
                return true;
            }
            let binding = self.channel_binding(tls);
            match handler.handle(slot, &request, binding.as_ref()) {
                Reply::Defer => {
                    // The frame stays in the decoder; the next poll offers it again. Nothing behind it is
                    // read meanwhile (the decoder holds one frame), so TCP flow control holds the client.
                    if !self.deferred {
                        counters.deferrals += 1;
                    }
                    self.deferred = true;
                    break;
                }
                Reply::Response(response) => {
                    self.take_request(&request, counters);
                    if self.queue(&response).is_err() {
                        // The handler produced a response too large for one frame; the client cannot be
                        // answered correctly, so end the connection instead of sending something else.
                        counters.unsendable += 1;
                        self.close_with(socket, None, now, limits);
                        return true;
                    }
                }
                Reply::Streaming => {
                    self.take_request(&request, counters);
                    self.capped.generated = true;
                    counters.streams += 1;
                    self.phase = Phase::Streaming;
                    self.send_deadline = None;
                    // A request pipelined behind this one has its frame time from now on.
                    self.frame_deadline = self
                        .decoder
                        .is_mid_frame()
                        .then(|| now + limits.frame_timeout);
                    // Read on at once: a cancel or an EOF already buffered must not wait for a packet.
                    self.service_streaming(
                        socket,
                        SlotContext {
                            slot,
                            port,
                            now,
                            limits,
                            tls,
                            handler,
                            counters,
                        },
                    );
                    return true;
                }
            }
        }

        if !socket.may_recv() {
            // The peer closed its side and everything it sent has been read. A frame cut short by EOF just
            // ends the connection: there is no request to answer.
            if self.decoder.is_mid_frame() {
                counters.truncated += 1;
            }
            self.close_with(socket, None, now, limits);
            return true;
        }
        if now >= self.deadline {
            if self.has_outgoing() {
                // The client stopped taking our bytes; an error frame would not get through either.
                counters.aborted += 1;
                self.abort(socket);
            } else {
                counters.timeouts += 1;
                self.close_with(
                    socket,
                    Some(Response::Error(ErrorCode::Timeout)),
                    now,
                    limits,
                );
            }
            return true;
        }
        progress
    }

    fn service_streaming<H: Handler + ?Sized>(
        &mut self,
        socket: &mut Socket<'_>,
        context: SlotContext<'_, H>,
    ) -> bool {
        let SlotContext {
            slot,
            port,
            now,
            limits,
            handler,
            counters,
            ..
        } = context;
        if socket.state() == State::Closed {
            // The peer reset the connection, or smoltcp gave up on it.
            counters.reset += 1;
            self.abandon_generation(slot, handler, counters);
            self.relisten(socket, port);
            return true;
        }
        let mut progress = self.flush(socket);
        // Unlike serving, read even while frames are queued: the client's cancel must get through while
        // tokens flow. At most one request is taken (a cancel ends the stream, anything else the
        // connection), so a client cannot make us buffer requests.
        loop {
            match self.receive(socket) {
                Ok(0) => break,
                Ok(_) => progress = true,
                Err(ReceiveError::Tls) => {
                    counters.tls_failures += 1;
                    self.abandon_generation(slot, handler, counters);
                    self.close_with(socket, None, now, limits);
                    return true;
                }
                Err(ReceiveError::Frame(error)) => {
                    let code = frame_error_code(error, counters);
                    self.abandon_generation(slot, handler, counters);
                    self.close_with(socket, Some(Response::Error(code)), now, limits);
                    return true;
                }
            }
            if self.decoder.is_mid_frame() && self.frame_deadline.is_none() {
                self.frame_deadline = Some(now + limits.frame_timeout);
            }
            let Some(body) = self.decoder.frame() else {
                continue;
            };
            let request = Request::parse(body);
            self.decoder.consume();
            self.frame_deadline = None;
            let code = match request {
                Ok(Request::Cancel) => {
                    counters.requests += 1;
                    counters.cancels += 1;
                    self.stop_generation(slot, handler);
                    self.deadline = now + limits.frame_timeout;
                    if self.queue(&Response::Error(ErrorCode::Cancelled)).is_err() {
                        // Only a failed TLS session refuses a frame; its alert is already queued.
                        self.close_with(socket, None, now, limits);
                        return true;
                    }
                    // Back to serving. Requests behind the cancel are read on the next poll (this one
                    // reports activity), so pipelined generate/cancel pairs cannot chain within one call.
                    self.flush(socket);
                    return true;
                }
                Ok(_) => {
                    // One generation at a time per connection (proto: `Request::Generate`).
                    counters.requests += 1;
                    counters.violations += 1;
                    ErrorCode::BadRequest
                }
                Err(_) => {
                    counters.bad_frames += 1;
                    ErrorCode::BadFrame
                }
            };
            self.abandon_generation(slot, handler, counters);
            self.close_with(socket, Some(Response::Error(code)), now, limits);
            return true;
        }

        if !socket.may_recv() {
            // EOF while tokens flow: the client has gone (a client keeps its sending side open until the
            // stream ends). Its slot and generation are freed now rather than after the next token.
            if self.decoder.is_mid_frame() {
                counters.truncated += 1;
            }
            self.abandon_generation(slot, handler, counters);
            self.close_with(socket, None, now, limits);
            return true;
        }
        self.update_send_deadline(now, limits);
        if self.send_deadline.is_some_and(|deadline| now >= deadline) {
            // The client stopped taking our frames; an error frame would not get through either.
            counters.aborted += 1;
            self.abandon_generation(slot, handler, counters);
            self.abort(socket);
            return true;
        }
        if self.frame_deadline.is_some_and(|deadline| now >= deadline) {
            // A request frame started and not finished in time (a client dribbling bytes).
            counters.timeouts += 1;
            self.abandon_generation(slot, handler, counters);
            self.close_with(
                socket,
                Some(Response::Error(ErrorCode::Timeout)),
                now,
                limits,
            );
            return true;
        }
        progress
    }

    /// Runs one step of this slot's generation and queues what it produced. Call only when
    /// [`Self::wants_step`] holds; the server does, at most once per poll.
    pub(crate) fn step<H: Handler + ?Sized>(
        &mut self,
        slot: usize,
        socket: &mut Socket<'_>,
        now: Instant,
        limits: &Limits,
        handler: &mut H,
        counters: &mut Counters,
    ) {
        let response = match handler.step(slot) {
            Step::Pending => return,
            Step::Frame(response) => response,
            Step::Final(response) => {
                // The handler has freed the generation itself: no stop from here on.
                counters.streams_finished += 1;
                self.phase = Phase::Serving;
                self.frame_deadline = None;
                self.send_deadline = None;
                // Serving's deadline: first for taking this frame, then (fresh) for the next request.
                self.deadline = now + limits.frame_timeout;
                response
            }
        };
        if self.queue(&response).is_err() {
            // A frame too large to encode: the stream cannot go on correctly.
            counters.unsendable += 1;
            self.abandon_generation(slot, handler, counters);
            self.close_with(socket, None, now, limits);
            return;
        }
        counters.stream_frames += 1;
        self.flush(socket);
        if self.is_streaming() {
            self.update_send_deadline(now, limits);
        }
    }

    /// Notes a new client's arrival.
    fn arrive(&mut self, now: Instant, counters: &mut Counters) {
        counters.arrivals += 1;
        self.since = now;
        self.arrival = counters.arrivals;
    }

    /// Marks the decoder's request as taken: consumed, counted, and (when capped) used up.
    fn take_request(&mut self, request: &Request, counters: &mut Counters) {
        self.decoder.consume();
        self.deferred = false;
        if *request != Request::Cancel {
            self.answered += 1;
        }
        counters.requests += 1;
        if let Some(used) = self.capped.flag(request) {
            *used = true;
        }
    }

    /// Whether the connection has reached `Limits::lifetime`.
    fn has_expired(&self, now: Instant, limits: &Limits) -> bool {
        limits
            .lifetime
            .is_some_and(|lifetime| now >= self.since + lifetime)
    }

    /// Ends the running generation, if any: [`Handler::stop`] once, and the slot is no longer streaming.
    /// Returns whether a generation was running.
    fn stop_generation<H: Handler + ?Sized>(&mut self, slot: usize, handler: &mut H) -> bool {
        if self.phase != Phase::Streaming {
            return false;
        }
        handler.stop(slot);
        self.phase = Phase::Serving;
        self.frame_deadline = None;
        self.send_deadline = None;
        true
    }

    /// [`Self::stop_generation`] for every reason other than the client's cancel (counted apart).
    fn abandon_generation<H: Handler + ?Sized>(
        &mut self,
        slot: usize,
        handler: &mut H,
        counters: &mut Counters,
    ) {
        if self.stop_generation(slot, handler) {
            counters.streams_stopped += 1;
        }
    }

    /// Streaming: the client has `frame_timeout` to take each queued frame, counted from when it was
    /// queued (frames are a few dozen bytes, so one waiting means the socket's whole buffer is unread).
    fn update_send_deadline(&mut self, now: Instant, limits: &Limits) {
        if !self.has_outgoing() {
            self.send_deadline = None;
        } else if self.send_deadline.is_none() {
            self.send_deadline = Some(now + limits.frame_timeout);
        }
    }

    fn service_closing(
        &mut self,
        socket: &mut Socket<'_>,
        port: u16,
        now: Instant,
        fin_queued: bool,
        counters: &mut Counters,
    ) -> bool {
        match socket.state() {
            // Closed: the peer acknowledged our FIN after its own (LAST-ACK done) or reset the connection.
            // TimeWait: both FINs are acknowledged. Nothing of this connection is left to deliver; reusing
            // the slot now instead of after smoltcp's 10 s TIME-WAIT keeps slots free for new clients (a
            // late retransmitted FIN then meets a listening socket and is answered with RST).
            State::Closed | State::TimeWait => {
                self.relisten(socket, port);
                return true;
            }
            _ => {}
        }
        let mut progress = self.flush(socket);
        // Whatever the peer still sends is discarded, so a full receive window cannot hold up its FIN.
        while matches!(socket.recv(|bytes| (bytes.len(), bytes.len())), Ok(discarded) if discarded > 0)
        {
            progress = true;
        }
        if !fin_queued && !self.has_outgoing() {
            socket.close();
            self.phase = Phase::Closing { fin_queued: true };
            progress = true;
        }
        if now >= self.deadline {
            counters.aborted += 1;
            self.abort(socket);
            progress = true;
        }
        progress
    }

    /// Queues `last` (if any), then moves to closing: FIN once it is sent, abort if that takes too long.
    fn close_with(
        &mut self,
        socket: &mut Socket<'_>,
        last: Option<Response>,
        now: Instant,
        limits: &Limits,
    ) {
        // Acknowledge the peer's FIN at once: the slot listens again as soon as both FINs are through,
        // and a delayed ACK would then never leave (the peer would retransmit its FIN and get RST).
        socket.set_ack_delay(None);
        if let Some(response) = last {
            // Our error frames are a few bytes; encoding them cannot exceed the frame limit.
            let _ = self.queue(&response);
        }
        if let Some(tls) = &mut self.tls {
            // close_notify (RFC 8446 §6.1) after the last response; nothing if the session failed.
            tls.close();
            tls.take_outgoing(&mut self.outgoing);
        }
        self.phase = Phase::Closing { fin_queued: false };
        self.deadline = now + limits.close_timeout;
    }

    fn abort(&mut self, socket: &mut Socket<'_>) {
        socket.abort();
        self.phase = Phase::Aborted;
    }

    /// Forgets the client and listens for the next one.
    fn relisten(&mut self, socket: &mut Socket<'_>, port: u16) {
        socket.set_ack_delay(Some(ACK_DELAY));
        if socket.listen(port).is_err() {
            // Only an open socket refuses to listen; force it closed first. `port` is nonzero (checked
            // when the server was built), so the second attempt cannot fail for that reason.
            socket.abort();
            let _ = socket.listen(port);
        }
        *self = Self::listening();
    }

    /// Moves what the client sent towards the frame decoder: through the TLS session when there is one.
    /// Returns how many bytes moved (0: nothing more until the client sends).
    fn receive(&mut self, socket: &mut Socket<'_>) -> Result<usize, ReceiveError> {
        let decoder = &mut self.decoder;
        let received = &mut self.received;
        let Some(tls) = &mut self.tls else {
            return match socket.recv(|bytes| {
                *received |= !bytes.is_empty();
                match decoder.push(bytes) {
                    Ok(taken) => (taken, Ok(taken)),
                    Err(error) => (0, Err(error)),
                }
            }) {
                Ok(result) => result.map_err(ReceiveError::Frame),
                Err(_) => Ok(0),
            };
        };
        let fed = match socket.recv(|bytes| {
            *received |= !bytes.is_empty();
            match tls.feed_incoming(bytes) {
                Ok(taken) => (taken, Ok(taken)),
                // The session failed and takes nothing more; drop what it was offered.
                Err(error) => (bytes.len(), Err(error)),
            }
        }) {
            Ok(result) => result,
            Err(_) => Ok(0),
        };
        // Handshake flights and alerts (including the one for a failure) go out in order.
        tls.take_outgoing(&mut self.outgoing);
        let fed = fed.map_err(|_: TlsError| ReceiveError::Tls)?;
        let decoded = decoder.push(tls.plaintext()).map_err(ReceiveError::Frame)?;
        tls.consume_plaintext(decoded);
        Ok(fed + decoded)
    }

    /// Encodes `response` as a frame and queues it for the client (encrypted when TLS is on).
    fn queue(&mut self, response: &Response) -> Result<(), ()> {
        let Some(tls) = &mut self.tls else {
            return response.emit(&mut self.outgoing).map_err(|_| ());
        };
        self.frame.clear();
        response.emit(&mut self.frame).map_err(|_| ())?;
        tls.write_plaintext(&self.frame).map_err(|_| ())?;
        tls.take_outgoing(&mut self.outgoing);
        Ok(())
    }

    /// This client's TLS session as the attestation binds it (docs/ARCHITECTURE.md §4), once its handshake is done.
    pub(crate) fn channel_binding(&self, server: Option<&TlsServer>) -> Option<ChannelBinding> {
        let exporter = self.tls.as_ref()?.attestation_exporter().ok()?;
        Some(ChannelBinding {
            spki_sha256: server?.identity().spki_sha256(),
            exporter,
        })
    }

    fn has_outgoing(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// Hands as much of the outgoing buffer to the socket as it takes. Returns whether it took anything.
    fn flush(&mut self, socket: &mut Socket<'_>) -> bool {
        if !self.has_outgoing() {
            return false;
        }
        match socket.send_slice(&self.outgoing[self.sent..]) {
            Ok(taken) if taken > 0 => {
                self.sent += taken;
                if !self.has_outgoing() {
                    self.outgoing.clear();
                    self.sent = 0;
                }
                true
            }
            _ => false,
        }
    }
}

/// The error frame for a broken request stream, counted.
fn frame_error_code(error: FrameError, counters: &mut Counters) -> ErrorCode {
    match error {
        FrameError::TooLarge { .. } => {
            counters.too_large += 1;
            ErrorCode::TooLarge
        }
        FrameError::Empty => {
            counters.bad_frames += 1;
            ErrorCode::BadFrame
        }
    }
}
