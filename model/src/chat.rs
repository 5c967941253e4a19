//! Chat turn formats of the two model families: a list of (role, content) turns becomes the prompt text, ending with
//! the assistant's turn opened.
//!
//! The formats are the Jinja chat templates each GGUF carries (`tokenizer.chat_template`), written out by hand:
//! - llama (SmolLM2): ChatML, `<|im_start|>{role}\n{content}<|im_end|>\n` per turn; when the first turn is not a
//!   system turn, SmolLM2's default system prompt ([`SMOLLM2_SYSTEM`]) comes first.
//! - qwen2 (Qwen2.5): the same ChatML, with Qwen2.5's default system prompt ([`QWEN2_SYSTEM`]).
//! - qwen3: ChatML without a default system prompt (the template's non-thinking extras are not added).
//! - llama with Llama 3's vocabulary (its `<|start_header_id|>` token): `<|start_header_id|>{role}<|end_header_id|>\n\n
//!   {content, trimmed}<|eot_id|>` per turn, no default system turn. This is Llama 3.0's template and llama.cpp's
//!   built-in `llama3` format; Llama 3.1 and later templates also put a dated "Cutting Knowledge" system turn
//!   first, which is left out (a client that wants one sends a system turn).
//! - gemma3: `<start_of_turn>{user|model}\n{content, trimmed}<end_of_turn>\n` per turn. Gemma has no system role:
//!   a leading system turn's text and a blank line are put before the first user turn's content. Turns after it
//!   must alternate user, model, user, ... (the template raises an error otherwise).
//!
//! BOS is not part of the text: the tokenizer adds it as the vocabulary says. Turn markers are special tokens, so
//! the result is tokenized with special tokens parsed (as `runner generate --chat` and the golden fixtures do).

use alloc::string::String;

use crate::tokenizer::Tokenizer;
use crate::transformer::Arch;

/// Qwen2.5's default system prompt (from its chat template).
pub const QWEN2_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// SmolLM2's default system prompt (from its chat template).
pub const SMOLLM2_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// The speaker of a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The user.
    User,
    /// The model's earlier answers.
    Assistant,
}

/// One turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Who speaks.
    pub role: Role,
    /// What they say.
    pub content: &'a str,
}

/// Why turns could not be formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatError {
    /// No turns at all.
    Empty,
    /// A system turn that is not the first turn.
    MisplacedSystem,
    /// Gemma: turns after the system turn do not alternate user, model, user, ... starting with the user.
    NotAlternating,
    /// A turn's content holds a control token's text (a turn marker, BOS, EOS): refused so that content cannot
    /// forge turns (see `session::Engine::encode_chat`).
    ControlToken,
}

impl core::fmt::Display for ChatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ChatError::Empty => "a chat needs at least one turn",
            ChatError::MisplacedSystem => "a system turn may only come first",
            ChatError::ControlToken => "a chat turn may not contain the model's control tokens",
            ChatError::NotAlternating => {
                "this model's turns must alternate user, assistant, user, ... starting with the user"
            }
        })
    }
}

/// A model family's turn format (see the module's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// ChatML with SmolLM2's default system turn (a llama file without Llama 3's header tokens).
    SmolLm2,
    /// ChatML with Qwen2.5's default system turn.
    Qwen2,
    /// ChatML without a default system turn.
    Qwen3,
    /// Llama 3's header tokens.
    Llama3,
    /// Gemma's turns.
    Gemma3,
}

impl Template {
    /// The format of a model of `arch` with the vocabulary `tokenizer`: the llama architecture covers SmolLM2 and
    /// Llama 3, told apart by Llama 3's `<|start_header_id|>` token.
    pub fn of(arch: Arch, tokenizer: &Tokenizer<'_>) -> Template {
        match arch {
            Arch::Llama if tokenizer.id("<|start_header_id|>").is_some() => Template::Llama3,
            Arch::Llama => Template::SmolLm2,
            Arch::Qwen2 => Template::Qwen2,
            Arch::Qwen3 => Template::Qwen3,
            Arch::Gemma3 => Template::Gemma3,
        }
    }
}

/// The prompt text for `messages` in `template`'s turn format, ending with the assistant's turn opened.
pub fn format(template: Template, messages: &[Message<'_>]) -> Result<String, ChatError> {
    if messages.is_empty() {
        return Err(ChatError::Empty);
    }
    if messages[1..].iter().any(|m| m.role == Role::System) {
        return Err(ChatError::MisplacedSystem);
    }
    Ok(match template {
        Template::SmolLm2 => chatml(messages, Some(SMOLLM2_SYSTEM)),
        Template::Qwen2 => chatml(messages, Some(QWEN2_SYSTEM)),
        Template::Qwen3 => chatml(messages, None),
        Template::Llama3 => llama3(messages),
        Template::Gemma3 => gemma(messages)?,
    })
}

/// The prompt text for one user message (what `runner generate --chat` sends).
pub fn user_prompt(template: Template, user: &str) -> String {
    // One user turn is always a valid chat.
    format(
        template,
        &[Message {
            role: Role::User,
            content: user,
        }],
    )
    .unwrap_or_default()
}

fn chatml(messages: &[Message<'_>], default_system: Option<&str>) -> String {
    let mut out = String::new();
    let turn = |out: &mut String, role: &str, content: &str| {
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push('\n');
        out.push_str(content);
        out.push_str("<|im_end|>\n");
    };
    if let (true, Some(system)) = (messages[0].role != Role::System, default_system) {
        turn(&mut out, "system", system);
    }
    for message in messages {
        let role = match message.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        turn(&mut out, role, message.content);
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

fn llama3(messages: &[Message<'_>]) -> String {
    let mut out = String::new();
    for message in messages {
        out.push_str("<|start_header_id|>");
        out.push_str(match message.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        });
        out.push_str("<|end_header_id|>\n\n");
        out.push_str(message.content.trim());
        out.push_str("<|eot_id|>");
    }
    out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
    out
}

fn gemma(messages: &[Message<'_>]) -> Result<String, ChatError> {
    let (system, turns) = match messages[0].role {
        Role::System => (Some(messages[0].content), &messages[1..]),
        _ => (None, messages),
    };
    if turns.is_empty() {
        // A system text alone has no user turn to go into.
        return Err(ChatError::Empty);
    }
    let mut out = String::new();
    for (index, message) in turns.iter().enumerate() {
        let expected = if index % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if message.role != expected {
            return Err(ChatError::NotAlternating);
        }
        out.push_str("<start_of_turn>");
        out.push_str(if expected == Role::User {
            "user"
        } else {
            "model"
        });
        out.push('\n');
        if index == 0 {
            if let Some(system) = system {
                out.push_str(system);
                out.push_str("\n\n");
            }
        }
        out.push_str(message.content.trim());
        out.push_str("<end_of_turn>\n");
    }
    out.push_str("<start_of_turn>model\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: Role, content: &str) -> Message<'_> {
        Message { role, content }
    }

    #[test]
    fn chatml_adds_the_default_system_prompt_only_when_none_is_given() {
        assert_eq!(
            user_prompt(Template::SmolLm2, "Hi"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = format(
            Template::SmolLm2,
            &[
                message(Role::System, "Be brief."),
                message(Role::User, "Hi"),
                message(Role::Assistant, "Hello."),
                message(Role::User, "Bye"),
            ],
        )
        .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_puts_the_system_text_into_the_first_user_turn() {
        assert_eq!(
            user_prompt(Template::Gemma3, "Write one sentence about the sea."),
            "<start_of_turn>user\nWrite one sentence about the sea.<end_of_turn>\n<start_of_turn>model\n"
        );
        let text = format(
            Template::Gemma3,
            &[
                message(Role::System, "Be brief."),
                message(Role::User, "  Hi \n"),
                message(Role::Assistant, "Hello."),
                message(Role::User, "Bye"),
            ],
        )
        .unwrap();
        assert_eq!(
            text,
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn llama3_frames_each_trimmed_turn_with_header_tokens() {
        assert_eq!(
            user_prompt(Template::Llama3, " Hi\n"),
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let text = format(
            Template::Llama3,
            &[
                message(Role::System, "Be brief."),
                message(Role::User, "Hi"),
                message(Role::Assistant, "Hello."),
                message(Role::User, "Bye"),
            ],
        )
        .unwrap();
        assert_eq!(
            text,
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn malformed_chats_are_typed_errors() {
        assert_eq!(format(Template::SmolLm2, &[]), Err(ChatError::Empty));
        let late_system = [message(Role::User, "a"), message(Role::System, "b")];
        assert_eq!(
            format(Template::SmolLm2, &late_system),
            Err(ChatError::MisplacedSystem)
        );
        assert_eq!(
            format(Template::Gemma3, &late_system),
            Err(ChatError::MisplacedSystem)
        );
        for turns in [
            &[message(Role::Assistant, "a")][..],
            &[message(Role::User, "a"), message(Role::User, "b")][..],
            &[message(Role::System, "s"), message(Role::Assistant, "a")][..],
        ] {
            assert_eq!(
                format(Template::Gemma3, turns),
                Err(ChatError::NotAlternating),
                "{turns:?}"
            );
        }
        // A system turn alone leaves Gemma no user turn to put it in.
        assert_eq!(
            format(Template::Gemma3, &[message(Role::System, "s")]),
            Err(ChatError::Empty)
        );
        // ChatML accepts any order after the system turn, as its template does.
        assert!(format(Template::SmolLm2, &[message(Role::Assistant, "a")]).is_ok());
    }
}
