//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): GPT-2's byte↔unicode mapping, the GPT-2 pre-tokenizer (with
//! SmolLM's split of every digit), and rank-ordered merges from `tokenizer.ggml.merges`.
//!
//! The pre-tokenizer implements the GPT-2 pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` by hand (core's Unicode
//! `is_alphabetic`/`is_numeric`/`is_whitespace` stand in for the regex classes); llama.cpp's `smollm` pre-type first
//! isolates each `\p{N}` character. Merging repeatedly joins the adjacent pair of lowest merge rank, leftmost first.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Tokenizer, TokenizerError};
use crate::gguf::{Gguf, Value};

/// GPT-2's printable bytes map to themselves; the other 68 map to U+0100.. in byte order.
fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('?')
}

/// Inverse of [`byte_to_char`].
fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        return if byte_to_char(b) == c { Some(b) } else { None };
    }
    (0..=255u8).find(|&b| byte_to_char(b) == c)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pre {
    Gpt2,
    /// GPT-2 after isolating every numeric character (llama.cpp `LLAMA_VOCAB_PRE_TYPE_SMOLLM`).
    SmolLm,
}

pub struct Bpe<'a> {
    ranks: BTreeMap<(&'a str, &'a str), u32>,
    pre: Pre,
    byte_chars: [char; 256],
}

impl<'a> Bpe<'a> {
    pub fn from_gguf(g: &Gguf<'a>) -> Result<Bpe<'a>, TokenizerError> {
        let pre = match g.get("tokenizer.ggml.pre").and_then(Value::as_str) {
            None | Some("default") | Some("gpt2") => Pre::Gpt2,
            Some("smollm") => Pre::SmolLm,
            Some(_) => return Err(TokenizerError::BadMetadata("tokenizer.ggml.pre")),
        };
        let merges = g
            .get("tokenizer.ggml.merges")
            .and_then(Value::as_array)
            .ok_or(TokenizerError::BadMetadata("tokenizer.ggml.merges"))?;
        let mut ranks = BTreeMap::new();
        for (rank, m) in merges.iter().enumerate() {
            let s = m
                .as_str()
                .ok_or(TokenizerError::BadMetadata("tokenizer.ggml.merges"))?;
            // The pair separator is the first space after the first character (a left part may itself be " "
            // in vocabularies that do not remap bytes, so skip one character before searching).
            let first_len = s.chars().next().map(char::len_utf8).unwrap_or(0);
            let Some(sp) = s[first_len..].find(' ').map(|p| p + first_len) else {
                return Err(TokenizerError::BadMetadata("tokenizer.ggml.merges"));
            };
            ranks.entry((&s[..sp], &s[sp + 1..])).or_insert(rank as u32);
        }
        let mut byte_chars = ['\0'; 256];
        for (b, c) in byte_chars.iter_mut().enumerate() {
            *c = byte_to_char(b as u8);
        }
        Ok(Bpe {
            ranks,
            pre,
            byte_chars,
        })
    }

    pub(super) fn encode(&self, tok: &Tokenizer<'_>, text: &str, out: &mut Vec<u32>) {
        let mut word = String::new();
        let mut each_word = |w: &str| {
            word.clear();
            for &b in w.as_bytes() {
                word.push(self.byte_chars[b as usize]);
            }
            self.merge_word(tok, &word, out);
        };
        match self.pre {
            Pre::Gpt2 => gpt2_split(text, &mut each_word),
            Pre::SmolLm => {
                let mut start = 0;
                for (i, c) in text.char_indices() {
                    if c.is_numeric() {
                        gpt2_split(&text[start..i], &mut each_word);
                        each_word(&text[i..i + c.len_utf8()]);
                        start = i + c.len_utf8();
                    }
                }
                gpt2_split(&text[start..], &mut each_word);
            }
        }
    }

    fn merge_word(&self, tok: &Tokenizer<'_>, word: &str, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        // Symbols as byte ranges of `word`, initially one per character.
        let mut sym: Vec<(usize, usize)> = word
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..sym.len().saturating_sub(1) {
                let (l, r) = (&word[sym[i].0..sym[i].1], &word[sym[i + 1].0..sym[i + 1].1]);
                if let Some(&rank) = self.ranks.get(&(l, r)) {
                    if best.is_none_or(|(b, _)| rank < b) {
                        best = Some((rank, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            sym[i].1 = sym[i + 1].1;
            sym.remove(i + 1);
        }
        for (s, e) in sym {
            let piece = &word[s..e];
            match tok.id(piece) {
                Some(id) => out.push(id),
                None => {
                    for (ci, c) in piece.char_indices() {
                        if let Some(id) = tok.id(&piece[ci..ci + c.len_utf8()]) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }
}

/// Calls `f` on each GPT-2 pre-token of `s`, in order; the pieces concatenate to `s`.
pub fn gpt2_split(s: &str, f: &mut dyn FnMut(&str)) {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let n = chars.len();
    let at = |i: usize| if i < n { chars[i].0 } else { s.len() };
    let is_other = |c: char| !c.is_whitespace() && !c.is_alphabetic() && !c.is_numeric();
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        if c == '\'' && i + 1 < n {
            let c1 = chars[i + 1].1;
            let c2 = if i + 2 < n {
                Some(chars[i + 2].1)
            } else {
                None
            };
            let len = match (c1, c2) {
                ('s' | 't' | 'm' | 'd', _) => 2,
                ('r', Some('e')) | ('v', Some('e')) | ('l', Some('l')) => 3,
                _ => 0,
            };
            if len > 0 {
                f(&s[at(i)..at(i + len)]);
                i += len;
                continue;
            }
        }
        let j = if c == ' ' && i + 1 < n && !chars[i + 1].1.is_whitespace() {
            i + 1
        } else {
            i
        };
        let cj = chars[j].1;
        let run = |from: usize, pred: &dyn Fn(char) -> bool| {
            let mut k = from;
            while k < n && pred(chars[k].1) {
                k += 1;
            }
            k
        };
        let end = if cj.is_alphabetic() {
            run(j, &|c| c.is_alphabetic())
        } else if cj.is_numeric() {
            run(j, &|c| c.is_numeric())
        } else if is_other(cj) {
            run(j, &is_other)
        } else {
            let k = run(i, &|c| c.is_whitespace());
            if k == n || k - i < 2 {
                k
            } else {
                k - 1
            }
        };
        f(&s[at(i)..at(end)]);
        i = end;
    }
}

/// Appends the bytes a BPE token text stands for.
pub fn decode(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        let mut v = Vec::new();
        gpt2_split(s, &mut |p| v.push(String::from(p)));
        v
    }

    #[test]
    fn gpt2_pretokenizer_matches_regex_semantics() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(
            split("it's  fine!!\n\nThe"),
            ["it", "'s", " ", " fine", "!!", "\n", "\n", "The"]
        );
        assert_eq!(split("a   b"), ["a", "  ", " b"]);
        assert_eq!(split("x \n"), ["x", " \n"]);
        assert_eq!(split(" 12ab"), [" 12", "ab"]);
    }

    #[test]
    fn byte_mapping_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
    }
}
