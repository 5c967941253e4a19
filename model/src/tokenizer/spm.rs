//! SentencePiece-style tokenization (`tokenizer.ggml.model = llama`, used by Gemma): spaces become U+2581, then
//! adjacent symbols merge greedily by the score of the merged vocabulary entry; leftovers fall back to byte tokens.
//!
//! Mirrors llama.cpp's `llm_tokenizer_spm_session`: start from single UTF-8 characters, repeatedly merge the
//! bigram whose concatenation is a vocabulary entry with the highest score (ties: leftmost), skipping stale
//! bigrams; symbols that are not vocabulary entries become `<0xXX>` byte tokens.

use alloc::collections::BinaryHeap;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Tokenizer, TOKEN_BYTE};

const SPACE: &str = "\u{2581}";

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == core::cmp::Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost.
    fn cmp(&self, o: &Self) -> core::cmp::Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Tokenizes one raw-text fragment (whitespace not yet escaped).
pub(super) fn encode(
    tok: &Tokenizer<'_>,
    fragment: &str,
    with_space_prefix: bool,
    out: &mut Vec<u32>,
) {
    let mut text = String::with_capacity(fragment.len() + 3);
    if with_space_prefix {
        text.push_str(SPACE);
    }
    for c in fragment.chars() {
        if c == ' ' {
            text.push_str(SPACE);
        } else {
            text.push(c);
        }
    }
    let mut sym: Vec<Symbol> = Vec::new();
    for (i, (s, c)) in text.char_indices().enumerate() {
        sym.push(Symbol {
            start: s,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
    }
    if let Some(last) = sym.last_mut() {
        last.next = None;
    }
    let mut heap = BinaryHeap::new();
    let try_add = |heap: &mut BinaryHeap<Bigram>,
                   sym: &[Symbol],
                   left: Option<usize>,
                   right: Option<usize>| {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let piece = &text[sym[l].start..sym[r].start + sym[r].len];
        if let Some(id) = tok.id(piece) {
            let score = tok.scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Bigram {
                left: l,
                right: r,
                score,
                size: piece.len(),
            });
        }
    };
    for i in 1..sym.len() {
        try_add(&mut heap, &sym, Some(i - 1), Some(i));
    }
    while let Some(b) = heap.pop() {
        let (l, r) = (b.left, b.right);
        if sym[l].len == 0 || sym[r].len == 0 || sym[l].len + sym[r].len != b.size {
            continue;
        }
        sym[l].len += sym[r].len;
        sym[r].len = 0;
        sym[l].next = sym[r].next;
        if let Some(n) = sym[r].next {
            sym[n].prev = Some(l);
        }
        let (p, n) = (sym[l].prev, sym[l].next);
        try_add(&mut heap, &sym, p, Some(l));
        try_add(&mut heap, &sym, Some(l), n);
    }
    let mut i = if sym.is_empty() { None } else { Some(0) };
    while let Some(k) = i {
        let piece = &text[sym[k].start..sym[k].start + sym[k].len];
        match tok.id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    let mut name = [0u8; 6];
                    name.copy_from_slice(b"<0x00>");
                    let hex = b"0123456789ABCDEF";
                    name[3] = hex[(b >> 4) as usize];
                    name[4] = hex[(b & 15) as usize];
                    let id = core::str::from_utf8(&name).ok().and_then(|n| tok.id(n));
                    if let Some(id) = id.or(tok.unknown()) {
                        out.push(id);
                    }
                }
            }
        }
        i = sym[k].next;
    }
}

/// Appends the bytes of an SPM token: `<0xXX>` byte tokens give their byte, U+2581 gives a space.
pub fn decode(text: &str, ty: i32, out: &mut Vec<u8>) {
    if ty == TOKEN_BYTE {
        if let Some(h) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(h, 16) {
                out.push(b);
                return;
            }
        }
    }
    for (i, part) in text.split(SPACE).enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(part.as_bytes());
    }
}
