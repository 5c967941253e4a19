//! The host's interleaved layout (`model::interleave`, README "Engine speed") changes no result: on the tiny llama
//! (Q4_1 projections and feed-forward) and gemma3 (Q5_0) models, at every kernel level this CPU has, the logits of a
//! prompt run as one batch and of the decode steps after it are bit for bit those of the file's layout, on one
//! thread and on two (rows split between the workers in whole groups of 4).

mod support;

use model::gguf::Gguf;
use model::interleave::interleave;
use model::parallel::{ParallelFor, Serial};
use model::simd::{self, Level};
use model::tiny::{generate, TinySpec};
use model::transformer::{Model, State};
use support::Kernels;

/// Every logit's bits after the prompt and after each of `steps` greedy steps.
fn logits(blob: &[u8], prompt: &[u32], steps: usize, par: &dyn ParallelFor) -> Vec<u32> {
    let g = Gguf::parse(blob).expect("the blob parses");
    let m = Model::load(&g).expect("the model loads");
    let mut state = State::new(&m.config, prompt.len() + steps + 1, prompt.len());
    m.forward(&mut state, prompt, par).expect("prefill");
    let mut bits: Vec<u32> = state.logits.iter().map(|v| v.to_bits()).collect();
    for _ in 0..steps {
        let next = model::sampler::argmax(&state.logits);
        m.forward(&mut state, &[next], par).expect("decode");
        bits.extend(state.logits.iter().map(|v| v.to_bits()));
    }
    bits
}

/// Where two runs' logits first differ (`None`: bit for bit equal); the vectors are too long to print.
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    (a.len() != b.len())
        .then_some(a.len().min(b.len()))
        .or_else(|| a.iter().zip(b).position(|(x, y)| x != y))
}

/// The levels this CPU runs (the best first), each with whether AVX512_VNNI is withheld: the AVX-512 level also
/// without it, where an interleaved model falls back to its groups given back in the file's layout.
fn levels() -> Vec<(Option<Level>, bool)> {
    let best = simd::level();
    let mut levels = vec![(None, false)];
    if best == Level::Avx512 {
        levels.push((None, true));
    }
    levels.extend(
        [Level::Avx2, Level::Scalar]
            .into_iter()
            .filter(|&l| l < best)
            .map(|l| (Some(l), false)),
    );
    levels
}

#[test]
fn interleaved_models_compute_the_file_layouts_logits_bitwise() {
    for spec in [TinySpec::llama(), TinySpec::gemma3()] {
        let file = generate(&spec, 5);
        let mut blob = file.clone();
        let done = interleave(&mut blob).expect("the tiny model interleaves");
        assert!(
            done.tensors > 0 && done.bytes > 0,
            "{:?}: {done:?}",
            spec.arch
        );
        assert_ne!(blob, file);
        let vocab = {
            let g = Gguf::parse(&blob).unwrap();
            let m = Model::load(&g).unwrap();
            assert!(m.weights.layers[0].w_gate.interleaved(), "{:?}", spec.arch);
            assert!(!m.weights.token_embd.interleaved());
            m.config.vocab_size as u32
        };
        // A second call finds nothing left to rearrange.
        let mut again = blob.clone();
        assert_eq!(interleave(&mut again).unwrap().tensors, 0);
        assert_eq!(again, blob);

        let prompt: Vec<u32> = (0..23).map(|i| (i * 37 + 11) % vocab).collect();
        for (level, without_vnni) in levels() {
            let _kernels = Kernels::force_vnni_withheld(level, without_vnni);
            let level = (level, without_vnni);
            let want = logits(&file, &prompt, 6, &Serial);
            assert_eq!(
                first_difference(&logits(&blob, &prompt, 6, &Serial), &want),
                None,
                "{:?} at {level:?}, one thread",
                spec.arch
            );
            #[cfg(feature = "std")]
            {
                let pool = model::parallel::ThreadPool::new(2).unwrap();
                assert_eq!(
                    first_difference(&logits(&blob, &prompt, 6, &pool), &want),
                    None,
                    "{:?} at {level:?}, two threads",
                    spec.arch
                );
            }
        }
    }
}

#[test]
fn a_flagged_type_code_is_refused_where_the_layout_cannot_hold() {
    // The tiny llama's first tensor in the header is marked interleaved whatever it is; a 1-D or non-Q4_1/Q5_0
    // tensor carrying the flag must be refused, not read as slabs.
    let blob = generate(&TinySpec::llama(), 1);
    let g = Gguf::parse(&blob).unwrap();
    let bad: Vec<_> = g
        .tensors
        .iter()
        .filter(|t| {
            t.n_dims == 1
                || !matches!(
                    t.ggml_type,
                    model::quant::GgmlType::Q4_1 | model::quant::GgmlType::Q5_0
                )
        })
        .map(|t| (t.name.to_string(), t.ggml_type as u32))
        .collect();
    assert!(!bad.is_empty());
    // Find each such tensor's type code in the header (after its name, dims) and set the flag.
    for (name, code) in bad.into_iter().take(3) {
        let mut copy = blob.clone();
        let at = copy
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .expect("the name is in the header");
        let g = Gguf::parse(&blob).unwrap();
        let t = g.tensor(&name).unwrap();
        let type_at = at + name.len() + 4 + 8 * t.n_dims;
        assert_eq!(
            u32::from_le_bytes(copy[type_at..type_at + 4].try_into().unwrap()),
            code,
            "{name}"
        );
        copy[type_at + 3] |= 0x80;
        assert!(Gguf::parse(&copy).is_err(), "{name} with the flag parsed");
    }
}
