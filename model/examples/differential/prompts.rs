//! The differential harness's prompt library (issue 15): 200 prompts per model in twelve kinds, raw text and chats
//! in the model's own turn format, from one token to about 2,000 (Gemma 3's 512-token sliding window is crossed
//! by the long kinds). The texts are the project's own; the long ones are built to a token count with the model's
//! tokenizer, so each model gets prompts of the stated lengths.

use model::chat::{self, Message, Role, Template};
use model::tokenizer::Tokenizer;
use model::transformer::Arch;

/// One prompt: a name that says its kind and number, and the text both engines tokenize (BOS as the vocabulary
/// says, control-token text parsed).
pub struct Prompt {
    pub name: String,
    pub text: String,
}

const STORIES: [&str; 20] = [
    "Once upon a time, in a village at the edge of a great forest, there lived",
    "The lighthouse keeper had not seen a ship in eleven days when",
    "It was the coldest winter anyone in the valley could remember, and",
    "Marta opened the letter slowly, because she already knew",
    "The robot had been built to sweep floors, but one morning it",
    "Nobody in the city noticed when the clocks began to run backwards",
    "Under the old bridge lived a troll who loved poetry more than",
    "The expedition reached the summit at dawn, only to find",
    "My grandfather kept a box of keys, none of which opened",
    "The last train of the night was almost empty, except for",
    "In the year 2300, the oceans had risen so far that",
    "The cat sat on the windowsill and watched the rain, thinking about",
    "When the power went out, the whole street came outside and",
    "The baker's apprentice discovered that the bread could talk",
    "A small boat drifted toward the island, carrying",
    "Every evening at six, the old man fed the pigeons and told them",
    "The detective looked at the muddy footprints and said",
    "Long ago, before the mountains had names,",
    "The spaceship's computer woke the crew with an alarm:",
    "She planted a seed in the garden, and by morning",
];

const CODE: [&str; 20] = [
    "fn main() {\n    let numbers = vec![1, 2, 3, 4];\n    let total: i32 = numbers.iter().sum();\n    println!(\"{}\", total);\n}\n\nfn fibonacci(n: u64) -> u64 {\n",
    "def quicksort(items):\n    if len(items) <= 1:\n        return items\n    pivot = items[0]\n",
    "#include <stdio.h>\n\nint main(void) {\n    for (int i = 0; i < 10; i++) {\n",
    "function debounce(fn, delay) {\n  let timer;\n  return (...args) => {\n",
    "SELECT customers.name, COUNT(orders.id) AS order_count\nFROM customers\nLEFT JOIN orders ON",
    "#!/usr/bin/env bash\nset -euo pipefail\nfor file in *.txt; do\n",
    "<!DOCTYPE html>\n<html>\n<head>\n  <title>My page</title>\n</head>\n<body>\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "impl<T: Ord> BinaryHeap<T> {\n    pub fn push(&mut self, value: T) {\n",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tch := make(chan int)\n",
    "{\n  \"name\": \"cloister\",\n  \"version\": \"0.1.0\",\n  \"dependencies\": {\n",
    "public class HelloWorld {\n    public static void main(String[] args) {\n",
    "import numpy as np\n\nmatrix = np.zeros((3, 3))\nfor i in range(3):\n",
    "const express = require('express');\nconst app = express();\n\napp.get('/', (req, res) => {\n",
    "struct Point { x: f64, y: f64 }\n\nimpl Point {\n    fn distance(&self, other: &Point) -> f64 {\n",
    "x = [i ** 2 for i in range(10) if i % 2 == 0]\nprint(x)\n# Output:",
    "CREATE TABLE users (\n    id SERIAL PRIMARY KEY,\n    email TEXT NOT NULL UNIQUE,\n",
    "    if (ptr == NULL) {\n        fprintf(stderr, \"out of memory\\n\");\n        return -1;\n    }\n",
    "// Binary search over a sorted slice.\nfn search(haystack: &[i32], needle: i32) -> Option<usize> {\n",
    "<?php\n$items = array(\"apple\", \"banana\");\nforeach ($items as $item) {\n",
];

const NUMBERS: [&str; 20] = [
    "12 + 35 =",
    "The year 1989 was followed by 1990, 1991, 1992,",
    "3.14159265358979323846",
    "1, 1, 2, 3, 5, 8, 13, 21, 34,",
    "Call 555-0123 or +1 (800) 555-0199 before 9:30 a.m.",
    "0x7f454c46 0x02010100 0x00000000",
    "The invoice total is $1,234,567.89, due on 2026-12-31.",
    "100000000000000000000000",
    "2^10 = 1024, 2^20 = 1048576, 2^30 =",
    "Temperature: -40°C equals -40°F; 100°C equals",
    "Row 7, column 12: 0.000123, 4.5e-7, 6.02214076e23",
    "9 8 7 6 5 4 3 2 1 0 9 8 7 6 5 4 3 2 1",
    "Version 1.2.3-beta.4+build.567",
    "IP 192.168.0.1/24, gateway 10.0.2.2, port 7000",
    "The ratio 22/7 ≈ 3.142857 while 355/113 ≈",
    "Q3 revenue rose 12.5% to 4.2 billion, up from 3.73 billion",
    "1st, 2nd, 3rd, 4th, 5th, 21st, 22nd, 101st",
    "MMXXVI is 2026 in Roman numerals, and XLII is",
    "SHA-256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "If x = 7 and y = 3, then x * y - (x + y) =",
];

const SCRIPTS: [&str; 20] = [
    "北京是中华人民共和国的首都，也是",
    "東京は日本の首都であり、世界で最も",
    "서울은 대한민국의 수도이며",
    "Москва — столица России и крупнейший город",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και",
    "القاهرة هي عاصمة مصر وأكبر مدينة في",
    "ירושלים היא עיר עתיקה ש",
    "दिल्ली भारत की राजधानी है और",
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "Hà Nội là thủ đô của nước Cộng hòa Xã hội chủ nghĩa Việt Nam",
    "İstanbul, Türkiye'nin en kalabalık şehridir ve",
    "Zürich liegt am Zürichsee, und die Straße führt über",
    "Ο γρήγορος καφέ σκύλος πηδάει πάνω από",
    "我喜欢吃苹果和香蕉，但是我的朋友",
    "こんにちは、元気ですか？今日はいい天気ですね。",
    "Съешь же ещё этих мягких французских булок",
    "Կարմիր խնձորը ընկավ ծառից",
    "ეს არის ქართული ენა, რომელიც",
    "Mixed: English, 中文, русский, العربية, हिन्दी in one line",
    "Ñandú, pingüino, acción, corazón, niño y",
];

const EMOJI: [&str; 10] = [
    "I love pizza 🍕🍕🍕 and ice cream 🍦!",
    "🚀 Launch in 3… 2… 1… 🔥",
    "Weather today: ☀️ then 🌧️ then ⛈️",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs",
    "😀😃😄😁😆😅🤣😂🙂🙃",
    "Status: ✅ done ❌ failed ⚠️ warning",
    "🇫🇷 France, 🇯🇵 Japan, 🇧🇷 Brazil",
    "The cat 🐱 chased the mouse 🐭 around the 🏠",
    "♠️♥️♦️♣️ cards and 🎲 dice",
    "Math: ∑ ∫ √ ∞ ≠ ≤ ≥ and arrows → ← ↑ ↓",
];

const WHITESPACE: [&str; 10] = [
    "word          word",
    "\n\n\n\nA paragraph after blank lines.",
    "\t\tindented\twith\ttabs\t\t",
    "trailing spaces    \nnext line    \n",
    "                                                                end",
    "a \n b \n  c \n   d \n    e",
    "\r\nWindows line\r\nendings\r\n",
    "mixed \t \n \t \n spaces",
    "     leading spaces before text",
    "one\n\n\n\n\n\n\n\n\n\ntwo",
];

const REPEATS: [&str; 10] = [
    "the the the the the the the the the the the the the the the the",
    "Buffalo buffalo Buffalo buffalo buffalo buffalo Buffalo buffalo",
    "hahahahahahahahahahahahahahahahahahaha",
    "no, no, no, no, no, no, no, no, no, no,",
    "abcabcabcabcabcabcabcabcabcabcabcabcabc",
    "........................................",
    "yes yes yes no yes yes yes no yes yes yes",
    "--------------------------------------------------------",
    "I think that I think that I think that I think that",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

const SHORT: [&str; 10] = [
    "a", "The", "1", "\n", "Hello", "?", "Paris", " ", "def", "Q:",
];

const QUESTIONS: [&str; 30] = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "What is 17 times 23?",
    "Translate 'good morning' into Spanish.",
    "Give me three tips for better sleep.",
    "Who wrote Romeo and Juliet?",
    "What does a CPU do?",
    "Name the planets of the solar system.",
    "Why is the sky blue?",
    "Write a Python function that reverses a string.",
    "What is the boiling point of water at sea level?",
    "Summarize the plot of Cinderella in one paragraph.",
    "What is the difference between a virus and a bacterium?",
    "List five fruits that are red.",
    "How do I make a cup of tea?",
    "What is the square root of 144?",
    "Tell me a short joke about computers.",
    "What language is spoken in Brazil?",
    "Describe a cat to someone who has never seen one.",
    "What is the tallest mountain on Earth?",
    "Explain recursion to a child.",
    "What are the primary colors?",
    "How long does light take to reach Earth from the Sun?",
    "Write a limerick about a frog.",
    "What is machine learning?",
    "Convert 5 kilometers to miles.",
    "What is the chemical symbol for gold?",
    "Suggest a name for a pet turtle.",
];

const SYSTEMS: [&str; 3] = [
    "You are a concise assistant. Answer in one sentence.",
    "You are a pirate. Answer every question as a pirate would.",
    "You are a careful teacher who explains step by step.",
];

const MIXED_CHATS: [&str; 10] = [
    "Fix this code:\n```rust\nfn add(a: i32, b: i32) -> i32 { a - b }\n```",
    "Translate to English: 今日はとても暑いです。",
    "What does this emoji mean: 🙃?",
    "Что такое фотосинтез?",
    "Compute: (12.5 * 4) / 0.25 - 3^2",
    "Explain this SQL: SELECT COUNT(*) FROM t WHERE x > 10;",
    "¿Cuál es la capital de Argentina?",
    "Summarize:    lots   of    spaces    here   .",
    "Write JSON for a person with name and age.",
    "Is 1,000,003 a prime number?",
];

/// A paragraph of ordinary prose, numbered, for the long kinds.
fn paragraph(index: usize) -> String {
    let story = STORIES[index % STORIES.len()];
    let question = QUESTIONS[index % QUESTIONS.len()];
    format!(
        "{index}. {story} the people of the town gathered to ask: {question} Nobody answered at first, and the \
         silence lasted until the bells rang {index} times across the square.\n"
    )
}

/// Prose of at least `tokens` tokens under `tokenizer`.
fn long_text(tokenizer: &Tokenizer<'_>, tokens: usize, offset: usize) -> String {
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut index = offset;
    loop {
        text.push_str(&paragraph(index));
        index += 1;
        ids.clear();
        tokenizer.encode(&text, true, true, &mut ids);
        if ids.len() >= tokens {
            return text;
        }
    }
}

fn chat_text(template: Template, turns: &[(Role, &str)]) -> String {
    let messages: Vec<Message<'_>> = turns
        .iter()
        .map(|&(role, content)| Message { role, content })
        .collect();
    chat::format(template, &messages).expect("the library's chats are valid for every model")
}

/// The 200 prompts for a model of `arch` whose tokenizer is `tokenizer`.
pub fn library(arch: Arch, tokenizer: &Tokenizer<'_>) -> Vec<Prompt> {
    let template = Template::of(arch, tokenizer);
    let mut prompts = Vec::new();
    let mut add = |kind: &str, text: String| {
        let name = format!("{:03}-{kind}", prompts.len());
        prompts.push(Prompt { name, text });
    };
    for text in STORIES {
        add("story", text.to_string());
    }
    for text in CODE {
        add("code", text.to_string());
    }
    for text in NUMBERS {
        add("numbers", text.to_string());
    }
    for text in SCRIPTS {
        add("script", text.to_string());
    }
    for text in EMOJI {
        add("emoji", text.to_string());
    }
    for text in WHITESPACE {
        add("whitespace", text.to_string());
    }
    for text in REPEATS {
        add("repeat", text.to_string());
    }
    for text in SHORT {
        add("short", text.to_string());
    }
    // Long prose: 100 to 2,000 tokens (Gemma 3's sliding window is 512).
    for (index, tokens) in [
        100, 200, 300, 400, 500, 520, 600, 700, 800, 1000, 1100, 1200, 1300, 1400, 1500, 1600,
        1700, 1800, 1900, 2000,
    ]
    .into_iter()
    .enumerate()
    {
        add("long", long_text(tokenizer, tokens, index * 7));
    }
    for (index, question) in QUESTIONS.into_iter().enumerate() {
        let text = match index % 3 {
            0 => chat_text(template, &[(Role::User, question)]),
            _ => chat_text(
                template,
                &[
                    (Role::System, SYSTEMS[index % SYSTEMS.len()]),
                    (Role::User, question),
                ],
            ),
        };
        add("chat", text);
    }
    for index in 0..20 {
        let first = QUESTIONS[index];
        let answer = STORIES[index];
        let second = QUESTIONS[(index + 7) % QUESTIONS.len()];
        let mut turns = vec![
            (Role::User, first),
            (Role::Assistant, answer),
            (Role::User, second),
        ];
        if index % 2 == 1 {
            let third = QUESTIONS[(index + 13) % QUESTIONS.len()];
            turns.extend([
                (Role::Assistant, STORIES[(index + 3) % STORIES.len()]),
                (Role::User, third),
            ]);
        }
        if index % 4 == 0 {
            turns.insert(0, (Role::System, SYSTEMS[index % SYSTEMS.len()]));
        }
        add("multiturn", chat_text(template, &turns));
    }
    for text in MIXED_CHATS {
        add("chat-mixed", chat_text(template, &[(Role::User, text)]));
    }
    prompts
}
