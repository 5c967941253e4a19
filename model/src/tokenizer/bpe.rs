//! Byte-level BPE (`tokenizer.ggml.model = gpt2`): GPT-2's byte↔unicode mapping, the GPT-2 pre-tokenizer (with
//! SmolLM's split of every digit), and rank-ordered merges from `tokenizer.ggml.merges`.
//!
//! The pre-tokenizer implements the GPT-2 pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` by hand (core's Unicode
//! `is_alphabetic`/`is_numeric`/`is_whitespace` stand in for the regex classes); llama.cpp's `smollm` pre-type first
//! isolates each `\p{N}` character. Merging repeatedly joins the adjacent pair of lowest merge rank, leftmost first.
//!
//! Llama 3 (`llama-bpe`) and Qwen2 (`qwen2`, also Qwen3's files) use another pattern, written out by hand in
//! [`llama3_split`]:
//! `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! with `\p{N}` alone (one digit per pre-token) for `qwen2`.

use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;

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
    /// Llama 3's pattern, numbers in runs of up to three digits (`LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
    Llama3,
    /// Llama 3's pattern with one digit per pre-token (`LLAMA_VOCAB_PRE_TYPE_QWEN2`).
    Qwen2,
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
            Some("llama-bpe" | "llama3") => Pre::Llama3,
            Some("qwen2") => Pre::Qwen2,
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
            Pre::Llama3 => llama3_split(text, 3, &mut each_word),
            Pre::Qwen2 => llama3_split(text, 1, &mut each_word),
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
        // Llama 3's tokenizer ignores the merges for a pre-token that is itself in the vocabulary (Hugging Face's
        // `ignore_merges`, llama.cpp's `ignore_merges` for the `llama3` pre-tokenizer type): the merges may not
        // rebuild that token (" the" is one token while the merge path stops at " t" + "he", say).
        if self.pre == Pre::Llama3 {
            if let Some(id) = tok.id(word) {
                out.push(id);
                return;
            }
        }
        let sym = self.merge(word);
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

impl Bpe<'_> {
    /// The merge rank of two adjacent symbols, if the vocabulary merges them.
    fn rank(&self, word: &str, left: &Symbol, right: &Symbol) -> Option<u32> {
        let pair = (&word[left.start..left.end], &word[right.start..right.end]);
        self.ranks.get(&pair).copied()
    }

    /// BPE merging of one pre-token: repeatedly joins the adjacent pair of lowest rank, leftmost first, until
    /// no pair has a rank. Returns the final symbols as byte ranges of `word`, in order.
    ///
    /// The candidate pairs wait in a min-heap keyed by (rank, left symbol's start), so each merge costs
    /// O(log n) instead of a scan of the whole word (a rescan per merge is quadratic, and one long pre-token
    /// would stall the appliance's loop). Entries are never removed when a merge makes them stale: a popped
    /// entry is used only if both symbols are still alive, adjacent and unchanged since it was pushed.
    fn merge(&self, word: &str) -> Vec<(usize, usize)> {
        let count = word.chars().count();
        let mut symbols: Vec<Symbol> = word
            .char_indices()
            .enumerate()
            .map(|(index, (start, c))| Symbol {
                start,
                end: start + c.len_utf8(),
                previous: index.checked_sub(1),
                next: (index + 1 < count).then_some(index + 1),
            })
            .collect();
        let mut candidates = BinaryHeap::new();
        let push =
            |candidates: &mut BinaryHeap<Reverse<Candidate>>, symbols: &[Symbol], left: usize| {
                let Some(right) = symbols[left].next else {
                    return;
                };
                if let Some(rank) = self.rank(word, &symbols[left], &symbols[right]) {
                    candidates.push(Reverse(Candidate {
                        rank,
                        start: symbols[left].start,
                        left,
                        right,
                        left_end: symbols[left].end,
                        right_end: symbols[right].end,
                    }));
                }
            };
        for left in 0..count {
            push(&mut candidates, &symbols, left);
        }
        while let Some(Reverse(candidate)) = candidates.pop() {
            let (left, right) = (candidate.left, candidate.right);
            // Stale: the left symbol grew or was absorbed, or its neighbour changed since the push.
            let alive = symbols[left].next == Some(right)
                && symbols[left].end == candidate.left_end
                && symbols[right].end == candidate.right_end
                && symbols[right].start == candidate.left_end;
            if !alive {
                continue;
            }
            symbols[left].end = symbols[right].end;
            let after = symbols[right].next;
            symbols[left].next = after;
            if let Some(after) = after {
                symbols[after].previous = Some(left);
            }
            // The absorbed symbol is unlinked: mark it so no stale entry can use it as a left symbol.
            symbols[right].next = None;
            symbols[right].start = usize::MAX;
            if let Some(previous) = symbols[left].previous {
                push(&mut candidates, &symbols, previous);
            }
            push(&mut candidates, &symbols, left);
        }
        let mut pieces = Vec::new();
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(index) = at {
            pieces.push((symbols[index].start, symbols[index].end));
            at = symbols[index].next;
        }
        pieces
    }
}

/// One symbol of a word being merged: a byte range of the word, linked to its neighbours.
struct Symbol {
    start: usize,
    end: usize,
    previous: Option<usize>,
    next: Option<usize>,
}

/// A pair of adjacent symbols that the vocabulary merges, as it was when pushed. Ordered by rank, then by
/// position, so the heap yields the lowest rank and, among equals, the leftmost pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    start: usize,
    left: usize,
    right: usize,
    left_end: usize,
    right_end: usize,
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

/// Calls `f` on each pre-token of `s` under Llama 3's pattern (see the module comment), numbers split into runs of
/// at most `max_digits`; the pieces concatenate to `s`. The alternatives are tried in the pattern's order.
pub fn llama3_split(s: &str, max_digits: usize, f: &mut dyn FnMut(&str)) {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let n = chars.len();
    let at = |i: usize| if i < n { chars[i].0 } else { s.len() };
    let letter = |c: char| c.is_alphabetic();
    let number = |c: char| c.is_numeric();
    let newline = |c: char| c == '\r' || c == '\n';
    let other = |c: char| !c.is_whitespace() && !letter(c) && !number(c);
    let run = |from: usize, pred: &dyn Fn(char) -> bool| {
        let mut k = from;
        while k < n && pred(chars[k].1) {
            k += 1;
        }
        k
    };
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        let next = chars.get(i + 1).map(|&(_, c)| c);
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\'' {
            let lower = |k: usize| chars.get(k).map(|&(_, c)| c.to_ascii_lowercase());
            let len = match (lower(i + 1), lower(i + 2)) {
                (Some('s' | 't' | 'm' | 'd'), _) => 2,
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
                _ => 0,
            };
            if len > 0 {
                f(&s[at(i)..at(i + len)]);
                i += len;
                continue;
            }
        }
        let end = if letter(c) {
            // [^\r\n\p{L}\p{N}]?\p{L}+ without the optional character.
            run(i, &letter)
        } else if !newline(c) && !number(c) && next.is_some_and(letter) {
            // ... with it.
            run(i + 1, &letter)
        } else if number(c) {
            // \p{N}{1,max_digits}
            run(i, &number).min(i + max_digits)
        } else if other(c) || (c == ' ' && next.is_some_and(other)) {
            // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            let start = if c == ' ' { i + 1 } else { i };
            run(run(start, &other), &newline)
        } else {
            // Whitespace: \s*[\r\n]+ (up to the run's last newline), else \s+(?!\S), else \s+.
            let k = run(i, &|c| c.is_whitespace());
            match (i..k).rev().find(|&j| newline(chars[j].1)) {
                Some(last) => last + 1,
                None if k == n || k - i < 2 => k,
                None => k - 1,
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

    fn split3(s: &str, digits: usize) -> Vec<String> {
        let mut v = Vec::new();
        llama3_split(s, digits, &mut |p| v.push(String::from(p)));
        v
    }

    #[test]
    fn llama3_pretokenizer_matches_regex_semantics() {
        assert_eq!(split3("Hello world", 3), ["Hello", " world"]);
        assert_eq!(
            split3("I'M here, they'LL go", 3),
            ["I", "'M", " here", ",", " they", "'LL", " go"]
        );
        assert_eq!(split3("12345 apples", 3), ["123", "45", " apples"]);
        assert_eq!(
            split3("12345 apples", 1),
            ["1", "2", "3", "4", "5", " apples"]
        );
        assert_eq!(split3(" 42", 3), [" ", "42"]);
        assert_eq!(split3("\tword", 3), ["\tword"]);
        assert_eq!(split3("'hello", 3), ["'hello"]);
        assert_eq!(split3("ok!!\n\nnext", 3), ["ok", "!!\n\n", "next"]);
        assert_eq!(split3("a  \n  b", 3), ["a", "  \n", " ", " b"]);
        assert_eq!(split3("a   b", 3), ["a", "  ", " b"]);
        assert_eq!(split3("end   ", 3), ["end", "   "]);
        assert_eq!(split3(" !?", 3), [" !?"]);
        assert_eq!(split3("x\n", 3), ["x", "\n"]);
        for text in [
            "",
            "a",
            " ",
            "\n\n",
            "mixed 中文 and 123,456.7 'tis",
            "x \r\n y",
        ] {
            assert_eq!(split3(text, 3).concat(), text);
        }
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

    /// The merge rule as first written: rescan every adjacent pair after each merge (quadratic).
    fn reference_merge(bpe: &Bpe<'_>, word: &str) -> Vec<(usize, usize)> {
        let mut sym: Vec<(usize, usize)> = word
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..sym.len().saturating_sub(1) {
                let pair = (&word[sym[i].0..sym[i].1], &word[sym[i + 1].0..sym[i + 1].1]);
                if let Some(&rank) = bpe.ranks.get(&pair) {
                    if best.is_none_or(|(b, _)| rank < b) {
                        best = Some((rank, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            sym[i].1 = sym[i + 1].1;
            sym.remove(i + 1);
        }
        sym
    }

    #[test]
    fn heap_merge_equals_the_rescanning_merge() {
        // A vocabulary over a small alphabet with overlapping pairs, equal-looking runs and multi-byte
        // characters, so ties (leftmost first), stale candidates and chains of merges all occur.
        let merges = [
            ("a", "a"),
            ("aa", "a"),
            ("a", "b"),
            ("b", "a"),
            ("ab", "a"),
            ("aa", "aa"),
            ("b", "b"),
            ("é", "a"),
            ("a", "é"),
            ("ba", "b"),
            ("aaa", "b"),
            ("bb", "bb"),
        ];
        let mut ranks = BTreeMap::new();
        for (rank, pair) in merges.iter().enumerate() {
            ranks.entry(*pair).or_insert(rank as u32);
        }
        let bpe = Bpe {
            ranks,
            pre: Pre::Gpt2,
            byte_chars: ['\0'; 256],
        };
        let alphabet = ['a', 'b', 'é', 'c'];
        let mut state = 0x2545_f491_u32;
        for _ in 0..3000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let len = (state % 40) as usize;
            let word: String = (0..len)
                .map(|k| alphabet[((state >> (k % 24)) as usize + k * 7) % alphabet.len()])
                .collect();
            assert_eq!(bpe.merge(&word), reference_merge(&bpe, &word), "{word:?}");
        }
        for run in [
            "a",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababab",
            "éaéaéaéa",
        ] {
            assert_eq!(bpe.merge(run), reference_merge(&bpe, run), "{run:?}");
        }
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
