//! The tokenizers on real vocabularies: llama.cpp ships vocabulary-only GGUF files of the models it supports, each
//! with its own tokenizer test (`models/ggml-vocab-NAME.gguf.inp`: texts separated by `__ggml_vocab_test__` lines;
//! `.out`: the ids llama.cpp's `test-tokenizer-0` expects, one line per text, no special tokens added). This holds the
//! engine to them for the vocabularies of the architectures it runs: Llama 3 (`llama-bpe`, 128,256 tokens), Qwen 2/3
//! (`qwen2`, 151,936), Llama 2 style SentencePiece (`llama-spm`) and Phi-3 (SentencePiece), without downloading
//! those models' weights.
//!
//! The files come from the pinned llama-cpp-python source release (`scripts/llamacpp.sh`, unpacked under
//! `.cache/llama.cpp/VERSION/src/vendor/llama.cpp/models`; `.ci/run` fetches it). A missing file fails the test.

use std::path::PathBuf;

use model::gguf::Gguf;
use model::tokenizer::Tokenizer;

/// The vocabularies checked: the BPE pre-tokenizers and the SentencePiece models the engine implements.
const VOCABULARIES: [&str; 4] = ["llama-bpe", "qwen2", "llama-spm", "phi-3"];

/// llama.cpp's `models/` directory in the unpacked source release the scripts pin.
fn models_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = std::fs::read_to_string(workspace.join("scripts/llamacpp.sh"))
        .expect("scripts/llamacpp.sh");
    let version = script
        .lines()
        .find_map(|line| line.strip_prefix("LLAMA_CPP_PYTHON_VERSION_DEFAULT="))
        .expect("the pinned version in scripts/llamacpp.sh")
        .trim_matches('"');
    let cache =
        std::env::var_os("CLOISTER_CACHE").map_or_else(|| workspace.join(".cache"), PathBuf::from);
    cache
        .join("llama.cpp")
        .join(version)
        .join("src/vendor/llama.cpp/models")
}

/// The texts and expected ids of one vocabulary's test, split as `test-tokenizer-0` splits them.
fn cases(dir: &std::path::Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let read = |suffix: &str| {
        let path = dir.join(format!("ggml-vocab-{name}.gguf{suffix}"));
        std::fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error}; fetch llama.cpp's sources with scripts/llamacpp.sh (as .ci/run does)",
                path.display()
            )
        })
    };
    let (inputs, outputs) = (read(".inp"), read(".out"));
    let separator = "\n__ggml_vocab_test__\n";
    let mut texts: Vec<&str> = inputs.split(separator).collect();
    // The file ends with a separator, after which `test-tokenizer-0` reads no further text.
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = outputs
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("an id"))
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{name}: texts and expected lines differ in number"
    );
    texts.into_iter().map(String::from).zip(ids).collect()
}

#[test]
fn real_vocabularies_tokenize_as_llama_cpp_expects() {
    let dir = models_dir();
    for name in VOCABULARIES {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let blob = std::fs::read(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error}; fetch llama.cpp's sources with scripts/llamacpp.sh (as .ci/run does)",
                path.display()
            )
        });
        let gguf = Gguf::parse(&blob).unwrap_or_else(|error| panic!("{name}: {error:?}"));
        let tokenizer =
            Tokenizer::from_gguf(&gguf).unwrap_or_else(|error| panic!("{name}: {error:?}"));
        let cases = cases(&dir, name);
        assert!(cases.len() >= 40, "{name}: only {} cases", cases.len());
        for (text, want) in &cases {
            let mut got = Vec::new();
            tokenizer.encode(text, false, false, &mut got);
            assert_eq!(&got, want, "{name}: {text:?}");
        }
        eprintln!(
            "{name}: {} texts tokenized as llama.cpp expects",
            cases.len()
        );
    }
}
