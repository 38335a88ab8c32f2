//! The model's own Jinja chat template, rendered with minijinja the way
//! Hugging Face renders it (jinja2 with trim_blocks and lstrip_blocks, Python
//! string methods, `raise_exception`).

use std::cell::RefCell;

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

const TEMPLATE_NAME: &str = "chat";

/// Why a conversation could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template itself called `raise_exception(message)`: the message is
    /// the template's own text (e.g. roles that do not alternate).
    #[error("{0}")]
    Raised(String),
    /// Any other failure while rendering.
    #[error("chat template failed to render: {0}")]
    Render(String),
}

/// One message of a conversation, as the template sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

thread_local! {
    /// Message of the last `raise_exception` call on this thread; minijinja
    /// may wrap the error it returns, so the text is carried beside it.
    static RAISED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with minijinja's message.
    pub fn new(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with jinja2's trim_blocks and
        // lstrip_blocks on.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| format!("{e:#}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                RAISED.with(|r| *r.borrow_mut() = Some(message.clone()));
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| format!("{e:#}"))?;
        Ok(Self {
            env,
            source: source.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation. `bos_token`/`eos_token` are the tokenizer's
    /// special-token strings, as Hugging Face passes them.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, TemplateError> {
        RAISED.with(|r| r.borrow_mut().take());
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("the chat template is added in ChatTemplate::new");
        let ctx = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        };
        template
            .render(ctx)
            .map_err(|e| match RAISED.with(|r| r.borrow_mut().take()) {
                Some(message) => TemplateError::Raised(message),
                None => TemplateError::Render(format!("{e:#}")),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TeenyTinyLlama-460m-Chat's template, verbatim from its tokenizer_config.json.
    pub const TTL_TEMPLATE: &str = "{{bos_token}}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '<instruction>' + message['content'].strip() + '</instruction>'}}{% elif message['role'] == 'assistant' %}{{ message['content'].strip() + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    fn render(msgs: &[(&str, &str)]) -> Result<String, TemplateError> {
        let t = ChatTemplate::new(TTL_TEMPLATE).unwrap();
        let msgs: Vec<_> = msgs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect();
        t.render(&msgs, true, "<s>", "</s>")
    }

    #[test]
    fn renders_and_strips() {
        assert_eq!(
            render(&[("user", "  Qual a capital do Brasil?\n")]).unwrap(),
            "<s><instruction>Qual a capital do Brasil?</instruction>"
        );
        assert_eq!(
            render(&[
                ("user", "Oi"),
                ("assistant", " Olá! "),
                ("user", "Tudo bem?")
            ])
            .unwrap(),
            "<s><instruction>Oi</instruction>Olá!</s><instruction>Tudo bem?</instruction>"
        );
    }

    #[test]
    fn raise_exception_carries_the_templates_text() {
        assert_eq!(
            render(&[("system", "Seja breve."), ("user", "Oi")]),
            Err(TemplateError::Raised(
                "Conversation roles must alternate user/assistant/user/assistant/...".into()
            ))
        );
        // A non-user role in an assistant slot passes the alternation check and
        // reaches the template's second raise.
        assert_eq!(
            render(&[("user", "a"), ("tool", "b")]),
            Err(TemplateError::Raised(
                "Only user and assistant roles are supported!".into()
            ))
        );
    }

    #[test]
    fn block_whitespace_follows_jinja2_trim_and_lstrip() {
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(
                &[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
                false,
                "",
                "",
            )
            .unwrap();
        // jinja2(trim_blocks=True, lstrip_blocks=True) renders exactly this.
        assert_eq!(out, "[a]\n[b]\n");
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(ChatTemplate::new("{% for m in messages %}").is_err());
    }
}
