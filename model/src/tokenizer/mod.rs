//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`): vocabulary, special-token splitting, BOS handling and
//! piece-by-piece detokenisation; the two model types live in [`bpe`] (`gpt2`) and [`spm`] (`llama`).
//!
//! Follows llama.cpp's `llama-vocab.cpp`: with special parsing on, the text is first cut at every occurrence of a
//! CONTROL, USER_DEFINED or UNKNOWN token (longest first); the remaining fragments go through the model's
//! tokenizer. BOS is prepended iff `tokenizer.ggml.add_bos_token` (default true for `llama` and for `gpt2` with Llama
//! 3's pre-tokenizer, false for other `gpt2`).

pub mod bpe;
pub mod spm;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::gguf::{Gguf, Value};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_BYTE: i32 = 6;

/// Why a tokenizer could not be built from the metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` is neither `gpt2` nor `llama`.
    UnsupportedModel,
    /// A required key is missing or malformed.
    BadMetadata(&'static str),
}

impl core::fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TokenizerError::UnsupportedModel => {
                write!(f, "unsupported tokenizer model (gpt2 and llama are)")
            }
            TokenizerError::BadMetadata(k) => {
                write!(f, "tokenizer metadata {k} is missing or invalid")
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bpe,
    Spm,
}

/// Vocabulary and tokenizer state, borrowing the token strings from the GGUF blob.
pub struct Tokenizer<'a> {
    pub kind: Kind,
    pub tokens: Vec<&'a str>,
    pub types: Vec<i32>,
    pub scores: Vec<f32>,
    ids: BTreeMap<&'a str, u32>,
    /// Special tokens (control, user-defined, unknown) by first byte, longest text first.
    specials_by_byte: Vec<Vec<u32>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub add_space_prefix: bool,
    unk: Option<u32>,
    bpe: Option<bpe::Bpe<'a>>,
}

fn key_u32(g: &Gguf<'_>, key: &str) -> Option<u32> {
    g.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

impl<'a> Tokenizer<'a> {
    pub fn from_gguf(g: &Gguf<'a>) -> Result<Tokenizer<'a>, TokenizerError> {
        let kind = match g.get("tokenizer.ggml.model").and_then(Value::as_str) {
            Some("gpt2") => Kind::Bpe,
            Some("llama") => Kind::Spm,
            _ => return Err(TokenizerError::UnsupportedModel),
        };
        let arr = g
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .ok_or(TokenizerError::BadMetadata("tokenizer.ggml.tokens"))?;
        let mut tokens = Vec::with_capacity(arr.len());
        for v in arr.iter() {
            tokens.push(
                v.as_str()
                    .ok_or(TokenizerError::BadMetadata("tokenizer.ggml.tokens"))?,
            );
        }
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(TokenizerError::BadMetadata("tokenizer.ggml.tokens"));
        }
        let types: Vec<i32> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) if a.len() == n => a
                .iter()
                .map(|v| match v {
                    Value::I32(t) => t,
                    other => other.as_u64().map(|t| t as i32).unwrap_or(TOKEN_NORMAL),
                })
                .collect(),
            Some(_) => return Err(TokenizerError::BadMetadata("tokenizer.ggml.token_type")),
            None => alloc::vec![TOKEN_NORMAL; n],
        };
        let scores: Vec<f32> = match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
            Some(a) if a.len() == n => a.iter().map(|v| v.as_f32().unwrap_or(0.0)).collect(),
            Some(_) => return Err(TokenizerError::BadMetadata("tokenizer.ggml.scores")),
            None if kind == Kind::Spm => {
                return Err(TokenizerError::BadMetadata("tokenizer.ggml.scores"))
            }
            None => Vec::new(),
        };
        let mut ids = BTreeMap::new();
        for (i, t) in tokens.iter().enumerate() {
            // First occurrence wins, as in llama.cpp's `token_to_id` map built in order.
            ids.entry(*t).or_insert(i as u32);
        }
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TOKEN_CONTROL | TOKEN_USER_DEFINED | TOKEN_UNKNOWN
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });
        let mut specials_by_byte = alloc::vec![Vec::new(); 256];
        for s in specials {
            specials_by_byte[tokens[s as usize].as_bytes()[0] as usize].push(s);
        }
        let check = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let bos = check(key_u32(g, "tokenizer.ggml.bos_token_id"));
        let eos = check(key_u32(g, "tokenizer.ggml.eos_token_id"));
        let unk = check(key_u32(g, "tokenizer.ggml.unknown_token_id"));
        // Without the key, llama.cpp adds BOS for SentencePiece vocabularies and for Llama 3's pre-tokenizer.
        let llama3_pre = matches!(
            g.get("tokenizer.ggml.pre").and_then(Value::as_str),
            Some("llama-bpe" | "llama3")
        );
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(kind == Kind::Spm || llama3_pre);
        let add_space_prefix = g
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(Value::as_bool)
            .unwrap_or(kind == Kind::Spm);
        let bpe = match kind {
            Kind::Bpe => Some(bpe::Bpe::from_gguf(g)?),
            Kind::Spm => None,
        };
        Ok(Tokenizer {
            kind,
            tokens,
            types,
            scores,
            ids,
            specials_by_byte,
            bos,
            eos,
            add_bos,
            add_space_prefix,
            unk,
            bpe,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// An upper bound on the prompt bytes one token can stand for: the longest token text (byte-level BPE
    /// writes each byte as one or two UTF-8 bytes, SentencePiece a space as three, byte-fallback tokens as
    /// six), and at least 4 for an unknown character. So a text of `n` bytes needs at least
    /// `n / longest_piece_bytes()` tokens, which lets a caller refuse a prompt that cannot fit a context
    /// before spending any work on tokenizing it.
    pub fn longest_piece_bytes(&self) -> usize {
        self.tokens
            .iter()
            .map(|text| text.len())
            .max()
            .unwrap_or(0)
            .max(4)
    }

    /// The fewest tokens a text of `bytes` bytes can tokenize into (see [`Self::longest_piece_bytes`]).
    pub fn fewest_tokens(&self, bytes: usize) -> usize {
        bytes.div_ceil(self.longest_piece_bytes())
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Tokenizes `text`, appending to `out`. With `parse_special`, special-token texts become their ids;
    /// `add_bos` prepends BOS if the vocabulary asks for it.
    pub fn encode(&self, text: &str, parse_special: bool, add_bos: bool, out: &mut Vec<u32>) {
        if add_bos && self.add_bos {
            if let Some(b) = self.bos {
                out.push(b);
            }
        }
        let bytes = text.as_bytes();
        let (mut fragment_start, mut i) = (0usize, 0usize);
        // SPM prefixes a space to a fragment at the start or after a special token (llama.cpp `is_prev_special`).
        let mut prev_special = true;
        while i < bytes.len() {
            let hit = self.specials_by_byte[bytes[i] as usize]
                .iter()
                .copied()
                .find(|&s| {
                    let allowed = parse_special || self.types[s as usize] == TOKEN_USER_DEFINED;
                    allowed && bytes[i..].starts_with(self.tokens[s as usize].as_bytes())
                });
            match hit {
                Some(s) => {
                    if fragment_start < i {
                        self.encode_fragment(&text[fragment_start..i], prev_special, out);
                    }
                    prev_special = true;
                    out.push(s);
                    i += self.tokens[s as usize].len();
                    fragment_start = i;
                }
                None => {
                    i += 1;
                    while i < bytes.len() && !text.is_char_boundary(i) {
                        i += 1;
                    }
                }
            }
        }
        if fragment_start < bytes.len() {
            self.encode_fragment(&text[fragment_start..], prev_special, out);
        }
    }

    fn encode_fragment(&self, text: &str, prev_special: bool, out: &mut Vec<u32>) {
        match (&self.bpe, self.kind) {
            (Some(b), Kind::Bpe) => b.encode(self, text, out),
            _ => spm::encode(self, text, self.add_space_prefix && prev_special, out),
        }
    }

    /// The unknown token, if the vocabulary has one.
    pub fn unknown(&self) -> Option<u32> {
        self.unk
    }

    /// Appends the bytes of token `id` (special tokens render as their text). Unknown ids add nothing.
    pub fn decode_piece(&self, id: u32, out: &mut Vec<u8>) {
        let Some(&text) = self.tokens.get(id as usize) else {
            return;
        };
        let ty = self.types[id as usize];
        if matches!(ty, TOKEN_CONTROL | TOKEN_USER_DEFINED | TOKEN_UNKNOWN) {
            out.extend_from_slice(text.as_bytes());
            return;
        }
        match self.kind {
            Kind::Bpe => bpe::decode(text, out),
            Kind::Spm => spm::decode(text, ty, out),
        }
    }

    /// Decodes a whole sequence (lossy where the bytes are not UTF-8).
    pub fn decode(&self, ids: &[u32]) -> alloc::string::String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.decode_piece(id, &mut bytes);
        }
        alloc::string::String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token byte pieces into valid UTF-8 text, holding back an incomplete trailing sequence.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes` and returns the text that is complete so far; invalid sequences become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> alloc::string::String {
        self.pending.extend_from_slice(bytes);
        let mut out = alloc::string::String::new();
        loop {
            match core::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(core::str::from_utf8(&self.pending[..good]).unwrap_or(""));
                    match e.error_len() {
                        // Incomplete sequence at the end: keep it for the next piece.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flushes whatever is left (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> alloc::string::String {
        let s = alloc::string::String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
