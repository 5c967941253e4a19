//! GGUF reader tests: round trips through the writer, every corruption the reader must name, truncation at every
//! length, and seeded byte-mutation fuzzing (the parser must return, never panic or over-allocate).

use model::gguf::{Gguf, GgufError, Value, ValueType};
use model::gguf_write::GgufWriter;
use model::quant::GgmlType;

fn sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.string("general.architecture", "llama")
        .u32("llama.block_count", 2)
        .f32("llama.rope.freq_base", 10000.0)
        .bool("tokenizer.ggml.add_bos_token", true)
        .strings("tokenizer.ggml.tokens", &["a", "bc", "<s>"])
        .f32s("tokenizer.ggml.scores", &[0.5, -1.0, 0.0])
        .i32s("tokenizer.ggml.token_type", &[1, 1, 3]);
    w.tensor("f32", &[4, 2], GgmlType::F32, (0..32u8).collect());
    w.tensor("q8", &[32], GgmlType::Q8_0, vec![7u8; 34]);
    w.finish()
}

/// A file with no metadata and one tensor whose info fields are given raw.
fn one_tensor(n_dims: u32, dims: &[u64], ggml_type: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b't');
    b.extend_from_slice(&n_dims.to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ggml_type.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + data_len, 0);
    b
}

#[test]
fn round_trip_metadata_and_tensors() {
    let blob = sample();
    let g = Gguf::parse(&blob).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(
        g.get("general.architecture").and_then(|v| v.as_str()),
        Some("llama")
    );
    assert_eq!(g.get("llama.block_count").and_then(|v| v.as_u64()), Some(2));
    assert_eq!(
        g.get("llama.rope.freq_base").and_then(|v| v.as_f32()),
        Some(10000.0)
    );
    assert_eq!(
        g.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(true))
    );
    let toks = g
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .unwrap();
    assert_eq!(toks.elem_type(), ValueType::String);
    let strs: Vec<&str> = toks.iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(strs, ["a", "bc", "<s>"]);
    let scores: Vec<f32> = g
        .get("tokenizer.ggml.scores")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f32().unwrap())
        .collect();
    assert_eq!(scores, [0.5, -1.0, 0.0]);
    let types: Vec<Value> = g
        .get("tokenizer.ggml.token_type")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(types, [Value::I32(1), Value::I32(1), Value::I32(3)]);
    let t = g.tensor("f32").unwrap();
    assert_eq!(
        (t.dims(), t.ggml_type, t.n_elements()),
        (&[4u64, 2][..], GgmlType::F32, 8)
    );
    assert_eq!(t.data, &(0..32u8).collect::<Vec<_>>()[..]);
    assert_eq!(t.offset % 32, 0);
    let q = g.tensor("q8").unwrap();
    assert_eq!((q.data.len(), q.data[0], q.offset % 32), (34, 7, 0));
    assert!(g.tensor("missing").is_none());
}

#[test]
fn header_errors_are_named() {
    assert_eq!(Gguf::parse(b"GGU").unwrap_err(), GgufError::BadMagic);
    assert_eq!(
        Gguf::parse(b"GGML\x03\0\0\0").unwrap_err(),
        GgufError::BadMagic
    );
    let mut blob = sample();
    blob[4] = 1;
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::UnsupportedVersion(1)
    );
    blob[4] = 4;
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::UnsupportedVersion(4)
    );
    let mut blob = sample();
    blob[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::TooManyTensors(u64::MAX)
    );
    let mut blob = sample();
    blob[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::TooManyKeys(1 << 40)
    );
    // Counts the bytes could hold but over the reader's caps (memory per entry exceeds its encoding).
    let mut blob = sample();
    blob[16..24].copy_from_slice(&(model::gguf::MAX_KEYS + 1).to_le_bytes());
    blob.resize(blob.len() + 1_000_000, 0);
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::TooManyKeys(model::gguf::MAX_KEYS + 1)
    );
    let mut blob = sample();
    blob[8..16].copy_from_slice(&(model::gguf::MAX_TENSORS + 1).to_le_bytes());
    blob.resize(blob.len() + 3_000_000, 0);
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::TooManyTensors(model::gguf::MAX_TENSORS + 1)
    );
}

#[test]
fn metadata_errors_are_named() {
    // First key's length is at 24: claim an absurd length.
    let mut blob = sample();
    blob[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    assert!(matches!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::Truncated { .. }
    ));
    // First key is "general.architecture" (20 bytes): its type follows at 24 + 8 + 20.
    let at = 24 + 8 + 20;
    let mut blob = sample();
    blob[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::UnknownValueType { at, value_type: 99 }
    );
    // Invalid UTF-8 in the key.
    let mut blob = sample();
    blob[32] = 0xFF;
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::BadUtf8 { at: 24 }
    );

    let mut w = GgufWriter::new();
    w.strings("k", &["x"]);
    let mut blob = w.finish();
    // Array element type (after key len 8 + "k" + type 4) → 9 (array of arrays).
    let at = 24 + 8 + 1 + 4;
    blob[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::NestedArray { at }
    );
    let mut blob = w.finish();
    blob[at + 4..at + 12].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::Truncated { .. }
    ));

    let mut w = GgufWriter::new();
    w.u32("general.alignment", 3);
    assert_eq!(
        Gguf::parse(&w.finish()).unwrap_err(),
        GgufError::BadAlignment
    );
    let mut w = GgufWriter::new();
    w.string("general.alignment", "32");
    assert_eq!(
        Gguf::parse(&w.finish()).unwrap_err(),
        GgufError::BadAlignment
    );
}

#[test]
fn tensor_errors_are_named() {
    assert!(Gguf::parse(&one_tensor(1, &[32], GgmlType::Q8_0 as u32, 0, 34)).is_ok());
    assert_eq!(
        Gguf::parse(&one_tensor(1, &[32], 77, 0, 34)).unwrap_err(),
        GgufError::UnknownTensorType {
            tensor: 0,
            ggml_type: 77
        }
    );
    // A type ggml defines but this engine does not is refused by its name.
    let iq3_s = Gguf::parse(&one_tensor(1, &[256], 21, 0, 110)).unwrap_err();
    assert_eq!(
        iq3_s.to_string(),
        "tensor #0 has ggml type IQ3_S (21), which this engine does not support"
    );
    assert_eq!(
        Gguf::parse(&one_tensor(5, &[1, 1, 1, 1, 1], 0, 0, 4)).unwrap_err(),
        GgufError::TooManyDims {
            tensor: 0,
            n_dims: 5
        }
    );
    assert_eq!(
        Gguf::parse(&one_tensor(0, &[], 0, 0, 4)).unwrap_err(),
        GgufError::TooManyDims {
            tensor: 0,
            n_dims: 0
        }
    );
    assert_eq!(
        Gguf::parse(&one_tensor(1, &[33], GgmlType::Q8_0 as u32, 0, 68)).unwrap_err(),
        GgufError::BadShape { tensor: 0 }
    );
    assert_eq!(
        Gguf::parse(&one_tensor(2, &[32, 0], 0, 0, 4)).unwrap_err(),
        GgufError::BadShape { tensor: 0 }
    );
    assert_eq!(
        Gguf::parse(&one_tensor(
            4,
            &[1 << 20, 1 << 20, 1 << 20, 1 << 20],
            0,
            0,
            4
        ))
        .unwrap_err(),
        GgufError::BadShape { tensor: 0 }
    );
    assert_eq!(
        Gguf::parse(&one_tensor(1, &[8], 0, 4, 40)).unwrap_err(),
        GgufError::Misaligned { tensor: 0 }
    );
    assert_eq!(
        Gguf::parse(&one_tensor(1, &[8], 0, 0, 31)).unwrap_err(),
        GgufError::OutOfBounds { tensor: 0 }
    );
    assert_eq!(
        Gguf::parse(&one_tensor(1, &[8], 0, u64::MAX - 31, 32)).unwrap_err(),
        GgufError::OutOfBounds { tensor: 0 }
    );

    // Two tensors over the same bytes, and two with the same name.
    let mut w = GgufWriter::new();
    w.tensor("a", &[8], GgmlType::F32, vec![0; 32])
        .tensor("b", &[8], GgmlType::F32, vec![0; 32]);
    let mut blob = w.finish();
    // Second info starts after header (24) + first info (8+1 + 4 + 8 + 4 + 8 = 33); its offset is its last 8 bytes.
    let second_offset_at = 24 + 33 + 33 - 8;
    blob[second_offset_at..second_offset_at + 8].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(
        Gguf::parse(&blob).unwrap_err(),
        GgufError::Overlap {
            first: 0,
            second: 1
        }
    );
    let mut w = GgufWriter::new();
    w.tensor("a", &[8], GgmlType::F32, vec![0; 32])
        .tensor("a", &[8], GgmlType::F32, vec![0; 32]);
    assert_eq!(
        Gguf::parse(&w.finish()).unwrap_err(),
        GgufError::DuplicateTensor { tensor: 1 }
    );
}

#[test]
fn every_truncation_is_an_error() {
    let blob = sample();
    let full = Gguf::parse(&blob).unwrap();
    let last_tensor_end = full
        .tensors
        .iter()
        .map(|t| t.offset + t.data.len())
        .max()
        .unwrap();
    for len in 0..last_tensor_end {
        assert!(
            Gguf::parse(&blob[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

#[test]
fn seeded_mutations_never_panic() {
    let blob = sample();
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..20_000 {
        let mut m = blob.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % m.len();
            m[i] = match next() % 4 {
                0 => 0xFF,
                1 => 0,
                2 => m[i] ^ (1 << (next() % 8)),
                _ => next() as u8,
            };
        }
        if next() % 8 == 0 {
            m.truncate((next() as usize) % m.len());
        }
        // Any outcome is fine as long as it returns; a successful parse must still be self-consistent.
        if let Ok(g) = Gguf::parse(&m) {
            for t in &g.tensors {
                assert!(t.offset + t.data.len() <= m.len());
            }
        }
    }
}
