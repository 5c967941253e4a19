//! Bounded work per step and the TPM's rate limits (issue 12, items 1 and 4; docs/ARCHITECTURE.md §5), on the
//! appliance's handler over a real swtpm and the tiny model: a long prompt is tokenized by a step of its own
//! (the server polls the network before it), TPM requests are spaced globally, and at most one TPM request
//! runs per server poll while a generation runs (so never two between two of its steps). The per-connection caps are the server's
//! (`net/tests/hardening.rs`).

use std::cell::Cell;
use std::rc::Rc;

use super::appliance::{answer, boot_with_clock, BINDING, BOOT_PCRS};
use super::support::Swtpm;
use crate::appliance::TPM_MIN_GAP_US;
use net::proto::{ErrorCode, GenerateRequest, Prompt, Request, Response, Sampling, Token};
use net::{Handler, Reply, Step};

/// A clock the test sets, advancing `auto` microseconds on every reading.
#[derive(Clone, Default)]
struct TestClock {
    now: Rc<Cell<u64>>,
    auto: Rc<Cell<u64>>,
}

impl TestClock {
    fn reader(&self) -> impl Fn() -> u64 {
        let (now, auto) = (self.now.clone(), self.auto.clone());
        move || {
            now.set(now.get() + auto.get());
            now.get()
        }
    }

    fn set(&self, now: u64) {
        self.now.set(now);
    }
}

fn generate(prompt: Prompt, max_tokens: u32) -> Request {
    Request::Generate(GenerateRequest {
        prompt,
        max_tokens,
        sampling: Sampling::GREEDY,
        stop: Vec::new(),
    })
}

fn attest() -> Request {
    Request::Attest {
        nonce: [3; 32],
        pcr_mask: BOOT_PCRS,
    }
}

/// Steps `slot` to its end: the token frames, the final frame and the steps taken.
fn drain<H: Handler>(handler: &mut H, slot: usize) -> (Vec<Token>, Response, usize) {
    let mut tokens = Vec::new();
    for steps in 1..1000 {
        match handler.step(slot) {
            Step::Pending => {}
            Step::Frame(Response::Token(token)) => tokens.push(token),
            Step::Frame(other) => panic!("unexpected frame {other:?}"),
            Step::Final(last) => return (tokens, last, steps),
        }
    }
    panic!("no final frame");
}

#[test]
fn a_long_prompt_is_tokenized_by_a_step_of_its_own() {
    let swtpm = Swtpm::start();
    let clock = TestClock::default();
    clock.auto.set(10);
    let (mut appliance, _) = boot_with_clock(&swtpm, clock.reader());
    let text = Prompt::Text("hello there, sea".into());
    // Tokenized when the request arrives (the prompt is under the inline limit).
    assert_eq!(
        appliance.handle(0, &generate(text.clone(), 6), None),
        Reply::Streaming
    );
    assert!(!appliance.generations().is_tokenizing(0));
    let (inline_tokens, inline_done, inline_steps) = drain(&mut appliance, 0);
    // The same prompt over the inline limit: accepted at once, untokenized.
    appliance.generations_mut().set_tokenize_inline_bytes(4);
    assert_eq!(
        appliance.handle(0, &generate(text, 6), None),
        Reply::Streaming
    );
    assert!(appliance.generations().is_tokenizing(0));
    // Another client is answered while nothing of the prompt has run (the server polls between steps).
    assert!(matches!(
        answer(appliance.handle(1, &Request::ModelInfo, None)),
        Response::ModelInfo(_)
    ));
    // The first step only yields (the server moves packets), the second tokenizes and does nothing else;
    // then the same prefill chunks and tokens follow.
    assert_eq!(appliance.step(0), Step::Pending);
    assert!(appliance.generations().is_tokenizing(0));
    assert_eq!(appliance.step(0), Step::Pending);
    assert!(!appliance.generations().is_tokenizing(0));
    let (tokens, done, steps) = drain(&mut appliance, 0);
    assert_eq!(tokens, inline_tokens);
    assert_eq!(steps, inline_steps);
    let (Response::Done(done), Response::Done(inline_done)) = (done, inline_done) else {
        panic!("no Done");
    };
    assert_eq!(done.prompt_tokens, inline_done.prompt_tokens);
    assert_eq!(done.generated_tokens, inline_done.generated_tokens);
}

#[test]
fn a_long_prompt_over_the_context_ends_its_stream_at_the_tokenizing_step() {
    let swtpm = Swtpm::start();
    let (mut appliance, _) = boot_with_clock(&swtpm, TestClock::default().reader());
    appliance.generations_mut().set_tokenize_inline_bytes(4);
    let context = appliance.generations().context();
    // Words of the tiny vocabulary's shortest pieces: more tokens than the context holds, in few enough
    // bytes that the untokenized bound (`fewest_tokens`) lets it through to the tokenizing step.
    let text: String = "a b ".repeat(context);
    assert_eq!(
        appliance.handle(0, &generate(Prompt::Text(text), 1), None),
        Reply::Streaming
    );
    assert_eq!(appliance.step(0), Step::Pending);
    assert_eq!(
        appliance.step(0),
        Step::Final(Response::Error(ErrorCode::ContextExceeded))
    );
    assert!(!appliance.generations().any_running());
    // Stopped while still untokenized: the session is free at once.
    appliance.handle(0, &generate(Prompt::Text("a b c".into()), 1), None);
    assert!(appliance.generations().is_tokenizing(0));
    appliance.stop(0);
    assert!(!appliance.generations().any_running());
    assert_eq!(
        appliance.handle(1, &generate(Prompt::Text("hello".into()), 2), None),
        Reply::Streaming
    );
}

#[test]
fn tpm_requests_are_spaced_globally_and_keep_the_tpm_at_most_half_busy() {
    let swtpm = Swtpm::start();
    let clock = TestClock::default();
    let (mut appliance, _) = boot_with_clock(&swtpm, clock.reader());
    clock.set(1_000_000);
    assert!(matches!(
        answer(appliance.handle(0, &attest(), Some(&BINDING))),
        Response::Evidence(_)
    ));
    // Another connection's attest right after it (the clock did not move: the quote took no time).
    assert_eq!(appliance.handle(1, &attest(), Some(&BINDING)), Reply::Defer);
    // Model info needs no TPM: never deferred.
    assert!(matches!(
        answer(appliance.handle(1, &Request::ModelInfo, None)),
        Response::ModelInfo(_)
    ));
    clock.set(1_000_000 + TPM_MIN_GAP_US - 1);
    assert_eq!(appliance.handle(1, &attest(), Some(&BINDING)), Reply::Defer);
    clock.set(1_000_000 + TPM_MIN_GAP_US);
    assert!(matches!(
        answer(appliance.handle(1, &attest(), Some(&BINDING))),
        Response::Evidence(_)
    ));
    // A slow TPM (300 ms a request, as on a cloud vTPM): the next may start only as long after the end.
    clock.set(10_000_000);
    clock.auto.set(300_000);
    // The rate check reads the clock once before the request, the request's timing twice.
    let started = 10_000_000 + 2 * 300_000;
    assert!(matches!(
        answer(appliance.handle(2, &attest(), Some(&BINDING))),
        Response::Evidence(_)
    ));
    clock.auto.set(0);
    let ended = started + 300_000;
    clock.set(ended + 300_000 - 1);
    assert_eq!(appliance.handle(3, &attest(), Some(&BINDING)), Reply::Defer);
    clock.set(ended + 300_000);
    assert!(matches!(
        answer(appliance.handle(3, &attest(), Some(&BINDING))),
        Response::Evidence(_)
    ));
}

#[test]
fn tpm_work_runs_at_most_once_per_poll_while_a_generation_runs() {
    let swtpm = Swtpm::start();
    let clock = TestClock::default();
    // A second a reading: the global spacing never holds these requests back.
    clock.auto.set(1_000_000);
    let (mut appliance, _) = boot_with_clock(&swtpm, clock.reader());
    appliance.poll_started();
    assert_eq!(
        appliance.handle(0, &generate(Prompt::Tokens(vec![1, 2, 3]), 20), None),
        Reply::Streaming
    );
    assert!(matches!(
        answer(appliance.handle(1, &attest(), Some(&BINDING))),
        Response::Evidence(_)
    ));
    // A second TPM request in the same poll would stall the generation's next step twice: deferred.
    assert_eq!(appliance.handle(2, &attest(), Some(&BINDING)), Reply::Defer);
    appliance.step(0);
    appliance.poll_started();
    assert!(matches!(
        answer(appliance.handle(2, &attest(), Some(&BINDING))),
        Response::Evidence(_)
    ));
    assert_eq!(appliance.handle(3, &attest(), Some(&BINDING)), Reply::Defer);
    // A poll without a step (the generation's client has not taken its last frame): the TPM is not held
    // back by a generation that is not computing.
    appliance.poll_started();
    assert!(matches!(
        answer(appliance.handle(3, &attest(), Some(&BINDING))),
        Response::Evidence(_)
    ));
    assert_eq!(appliance.handle(4, &attest(), Some(&BINDING)), Reply::Defer);
    // Once nothing generates, only the global spacing applies.
    appliance.stop(0);
    assert!(matches!(
        answer(appliance.handle(4, &attest(), Some(&BINDING))),
        Response::Evidence(_)
    ));
}
