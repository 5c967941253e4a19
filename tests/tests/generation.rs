//! End to end, streamed generation over a verified session (issue 5, "Tests", first bullet; docs/ARCHITECTURE.md §5): the release
//! appliance under QEMU TCG + swtpm with the tiny generated llama model, driven by the runner's verifying client
//! (`client::session`). Greedy output equals `cloister generate --temperature 0 --json` on the host token for token;
//! four sessions generate at once and interleave; a fifth generation is refused `Busy`; `Done` carries the usage.
//!
//! One appliance serves every test of this binary (`attest_support::shared_appliance`); tests take turns on it.
//! Needs qemu-system-x86, swtpm and swtpm-tools: a missing tool fails the tests, nothing is skipped.

mod attest_support;

use attest_support::streams::{self, assert_usage, done_of, tokens_per_second, verified_session};
use attest_support::*;

/// Tokens generated per prompt in the equality test.
const MAX_TOKENS: u32 = 48;

#[test]
fn greedy_output_equals_runner_generate_token_for_token() {
    let booted = shared_appliance();
    let prompts = [
        TestPrompt::Raw("Hello, world".into()),
        TestPrompt::Raw("The quick brown fox jumps over the lazy dog.".into()),
        TestPrompt::Raw("Once upon a time, in a land far away, there lived".into()),
        TestPrompt::Chat("What is the capital of France?".into()),
        TestPrompt::Chat("Write a haiku about attested inference.".into()),
    ];
    // Several generations on one verified session, and one on a second session.
    let mut session = verified_session(&booted);
    let mut second = verified_session(&booted);
    for (index, prompt) in prompts.iter().enumerate() {
        let host = host_generate(tiny_model(), prompt, MAX_TOKENS as usize);
        assert!(
            !host.generated_ids.is_empty(),
            "{prompt:?}: host generated nothing"
        );
        let on = if index == prompts.len() - 1 {
            &mut second
        } else {
            &mut session
        };
        let completion = on
            .complete(prompt.request(MAX_TOKENS), None, |_| {})
            .unwrap_or_else(|error| panic!("{prompt:?}: generation failed: {error:#}"));
        let ids: Vec<u32> = completion.tokens.iter().map(|token| token.id).collect();
        assert_eq!(
            ids, host.generated_ids,
            "{prompt:?}: the appliance's greedy ids differ from cloister generate's"
        );
        assert_eq!(completion.text, host.text, "{prompt:?}: text");
        let done = done_of(&completion);
        assert_usage(&done, &completion, &host, &format!("{prompt:?}"));
        eprintln!(
            "{prompt:?}: {} prompt + {} generated ids equal ({:?}); appliance (TCG) decode {:.1} tok/s, \
             prefill {:.1} ms; host decode {:.1} tok/s; first token after {:?} (client clock)",
            host.prompt_ids.len(),
            ids.len(),
            done.reason,
            tokens_per_second(&done),
            done.prefill_us as f64 / 1e3,
            host.decode_tok_s,
            completion.first_token
        );
    }
    let kinds = session.transcript().kinds();
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| **kind == client::session::RequestKind::Generate)
            .count(),
        prompts.len() - 1
    );
}

#[test]
fn four_sessions_stream_at_once_interleaved_and_a_fifth_is_busy() {
    streams::four_sessions_stream_at_once_interleaved_and_a_fifth_is_busy(&shared_appliance(), 1);
}
