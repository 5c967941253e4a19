//! Seed inputs for the raw-byte targets: the two deterministic tiny models of `model::tiny` (and both architectures
//! at their smallest shape), the tiny models' header cut at several points, and a few hand-written headers (empty
//! file, a lone tensor, counts and lengths that lie).

use model::gguf::{Gguf, GGUF_MAGIC};
use model::gguf_write::GgufWriter;
use model::quant::GgmlType;
use model::tiny::{generate, TinySpec};

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&n_tensors.to_le_bytes());
    out.extend_from_slice(&n_kv.to_le_bytes());
    out
}

/// `(file name, bytes)` for every seed.
pub fn all() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, spec) in [("llama", TinySpec::llama()), ("gemma3", TinySpec::gemma3())] {
        let blob = generate(&spec, 1);
        let data_offset = Gguf::parse(&blob)
            .expect("the tiny model parses")
            .data_offset;
        let mut cuts: Vec<usize> = vec![4, 8, 16, 24, 25];
        cuts.extend((1..8).map(|k| data_offset * k / 8));
        cuts.extend([data_offset, data_offset + 1, blob.len() / 2, blob.len() - 1]);
        for cut in cuts {
            out.push((format!("{name}-cut-{cut}"), blob[..cut].to_vec()));
        }
        out.push((format!("{name}-full"), blob));
    }
    // The smallest shapes the generator allows: whole models of ~20 KB that load and run.
    let small = |spec: TinySpec| TinySpec {
        n_layers: 1,
        dim: 32,
        ffn_dim: 64,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 16,
        context_length: 8,
        ..spec
    };
    out.push(("small-llama".into(), generate(&small(TinySpec::llama()), 2)));
    out.push((
        "small-gemma3".into(),
        generate(&small(TinySpec::gemma3()), 2),
    ));
    out.push(("empty-v3".into(), header(3, 0, 0)));
    out.push(("empty-v2".into(), header(2, 0, 0)));
    out.push(("version-1".into(), header(1, 0, 0)));
    out.push(("claims-many-tensors".into(), header(3, u64::MAX, 0)));
    out.push(("claims-many-keys".into(), header(3, 0, u64::MAX)));
    let mut w = GgufWriter::new();
    w.u32("general.alignment", 64)
        .strings("tokenizer.ggml.tokens", &["a", "b"])
        .string("tokenizer.ggml.model", "gpt2")
        .strings("tokenizer.ggml.merges", &["a b"]);
    w.tensor("t", &[32, 2], GgmlType::Q8_0, vec![0; 68]);
    out.push(("one-tensor".into(), w.finish()));
    let mut lying_array = header(3, 0, 1);
    lying_array.extend_from_slice(&1u64.to_le_bytes());
    lying_array.push(b'k');
    lying_array.extend_from_slice(&9u32.to_le_bytes());
    lying_array.extend_from_slice(&8u32.to_le_bytes());
    lying_array.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    lying_array.extend_from_slice(&[0; 16]);
    out.push(("array-count-lies".into(), lying_array));
    out
}
