//! The code paths every fuzz target and `model/tests/fuzz_regressions.rs` drive with one untrusted GGUF blob:
//! parse, walk every metadata value and tensor info, build the tokenizer and encode/decode with it, load the
//! model and, when it loads, run a prefill of up to 8 tokens and one decode step on a 12-position context.
//!
//! The regression test includes this very file (`#[path]`), so a fixture replays exactly what the fuzzer ran. Bad
//! input must end in a typed error ([`Outcome`]); the `assert!`s here state reader invariants, so a violated one is
//! a bug the fuzzer reports like a panic.

use model::gguf::{tensor_size, Gguf, GgufError, Value};
use model::parallel::Serial;
use model::tokenizer::{Tokenizer, TokenizerError};
use model::transformer::{Model, ModelError, State};

/// How far one input got. Every variant is an acceptable answer to hostile input; a panic is not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// `Gguf::parse` refused the blob.
    Parse(GgufError),
    /// Parsed; the tokenizer and the model both refused it.
    Refused(TokenizerError, ModelError),
    /// Parsed; the tokenizer result and the model result (and, if the model loaded, the forward steps' result).
    Loaded {
        tokenizer: Result<usize, TokenizerError>,
        model: Result<(), ModelError>,
    },
}

/// Text the tokenizer encodes: ASCII words, digits, specials of both chat formats, multi-byte UTF-8, whitespace runs.
const SAMPLE: &str =
    "<|im_start|>user\nthe sea, 42 é!  \t\n<start_of_turn>model ☃𝄞<|im_end|><end_of_turn>'ll x";

/// Forward steps run only for blobs up to this size, so one input costs at most a few milliseconds: every weight
/// byte is read once per token, and all weights lie inside the blob.
const FORWARD_MAX_BLOB: usize = 4 << 20;

/// Checks what `Gguf::parse` promises about an accepted blob, touching every metadata value and tensor info.
pub fn walk(g: &Gguf<'_>, blob_len: usize) {
    assert!(g.alignment.is_power_of_two());
    assert!(g.data_offset.is_multiple_of(g.alignment));
    for e in &g.metadata {
        assert!(g.get(e.key).is_some());
        match e.value {
            Value::Array(a) => {
                let mut n = 0usize;
                for v in a.iter() {
                    n += 1;
                    let _ = (v.as_u64(), v.as_f32(), v.as_str(), v.as_bool());
                    assert!(v.as_array().is_none(), "arrays do not nest");
                }
                assert_eq!(
                    n,
                    a.len(),
                    "an accepted array yields as many elements as it declares"
                );
                assert_eq!(a.is_empty(), n == 0);
            }
            v => {
                let _ = (v.as_u64(), v.as_f32(), v.as_str(), v.as_bool());
            }
        }
    }
    for t in &g.tensors {
        let size = tensor_size(t.dims(), t.ggml_type).expect("an accepted tensor has a valid size");
        assert_eq!(t.data.len(), size);
        assert!(t.n_dims >= 1 && t.n_dims <= model::gguf::MAX_DIMS);
        assert!(t.offset >= g.data_offset);
        assert!(t
            .offset
            .checked_add(size)
            .is_some_and(|end| end <= blob_len));
        assert!((t.offset - g.data_offset).is_multiple_of(g.alignment));
        assert!(t.n_elements() > 0);
        let found = g.tensor(t.name).expect("every tensor is found by its name");
        assert_eq!(found.offset, t.offset, "tensor names are unique");
    }
}

/// Builds the tokenizer and round-trips [`SAMPLE`]; returns the vocabulary size.
fn tokenize(g: &Gguf<'_>) -> Result<usize, TokenizerError> {
    let tok = Tokenizer::from_gguf(g)?;
    let n = tok.vocab_size();
    for (parse_special, add_bos) in [(true, true), (false, false)] {
        let mut ids = Vec::new();
        tok.encode(SAMPLE, parse_special, add_bos, &mut ids);
        assert!(
            ids.iter().all(|&id| (id as usize) < n),
            "encode yields ids inside the vocabulary"
        );
        let _ = tok.decode(&ids);
    }
    let mut bytes = Vec::new();
    for id in 0..n.min(1024) as u32 {
        tok.decode_piece(id, &mut bytes);
    }
    tok.decode_piece(u32::MAX, &mut bytes);
    let _ = (tok.id("the"), tok.unknown());
    Ok(n)
}

/// Loads the model and, for small blobs, runs a prefill of up to 8 tokens and one decode step (context 12).
fn load(g: &Gguf<'_>, blob_len: usize) -> Result<(), ModelError> {
    let m = Model::load(g)?;
    let c = &m.config;
    assert!(c.vocab_size > 0 && c.dim > 0 && c.n_layers > 0);
    assert_eq!(m.weights.layers.len(), c.n_layers);
    if blob_len > FORWARD_MAX_BLOB {
        return Ok(());
    }
    let mut state = State::new(c, 12, 9);
    // An out-of-range id is a typed error and leaves the state as it was.
    assert_eq!(
        m.forward(&mut state, &[c.vocab_size as u32], &Serial),
        Err(ModelError::BadTokenId(c.vocab_size as u32))
    );
    assert_eq!(state.pos, 0);
    // A prefill of up to 8 tokens (batched kernels take groups of 4 and 8 rows) leaving room for one decode step.
    let vocab = c.vocab_size as u32;
    let n_prefill = state.context.min(9).saturating_sub(1).max(1);
    let prefill: Vec<u32> = (0..n_prefill as u32)
        .map(|i| match i {
            0 => 0,
            1 => vocab - 1,
            _ => (i * 7919) % vocab,
        })
        .collect();
    m.forward(&mut state, &prefill, &Serial)?;
    assert_eq!(state.logits.len(), c.vocab_size);
    if state.pos < state.context {
        m.forward(&mut state, &[vocab / 2], &Serial)?;
    }
    // More tokens than the context holds is a typed error.
    let too_many = vec![0; state.context - state.pos + 1];
    assert!(matches!(
        m.forward(&mut state, &too_many, &Serial),
        Err(ModelError::ContextOverflow { .. })
    ));
    Ok(())
}

/// Runs every path on `blob`. Panics only if the code under test does.
pub fn run(blob: &[u8]) -> Outcome {
    let g = match Gguf::parse(blob) {
        Ok(g) => g,
        Err(e) => {
            let _ = e.to_string();
            return Outcome::Parse(e);
        }
    };
    walk(&g, blob.len());
    let tokenizer = tokenize(&g);
    let model = load(&g, blob.len());
    if let Err(e) = &model {
        let _ = e.to_string();
    }
    // The host's interleaved layout (`model::interleave`): a blob that parses rearranges without a panic, still
    // parses, and loads (and runs its forward steps) as the original did.
    let mut copy = blob.to_vec();
    let done = model::interleave::interleave(&mut copy).expect("a blob that parses interleaves");
    if done.tensors > 0 {
        let g = Gguf::parse(&copy).expect("an interleaved blob parses");
        assert_eq!(load(&g, copy.len()), model, "interleaving changed the load");
    }
    match (tokenizer, model) {
        (Err(t), Err(m)) => Outcome::Refused(t, m),
        (tokenizer, model) => Outcome::Loaded { tokenizer, model },
    }
}
