//! Incremental, UTF-8-safe detokenization: text is released only once the
//! tokens seen so far decode to whole characters, so a character split over
//! byte-fallback tokens ("ã" as <0xC3><0xA3>) never arrives broken, and the
//! concatenated deltas equal the decoding of all tokens at once (for any
//! sequence that decodes to valid UTF-8; for invalid byte runs, text once
//! released is never taken back, so callers build the final text from the
//! deltas too).

use lhama_model::Tokenizer;

#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// Tokens before this index have been released as text.
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            ..Self::default()
        }
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>, String> {
        self.ids.push(id);
        let skip = self.skip_special_tokens;
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let after = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        if after.ends_with('\u{FFFD}') {
            // Possibly a character whose remaining bytes are still to come.
            return Ok(None);
        }
        Ok(self.release(&before, &after))
    }

    /// Releases what `after` adds to `before` and moves the window on. When
    /// a later token changed how earlier bytes decode (a run of byte tokens
    /// that turned out invalid), the text already released stands and only
    /// the part after the common prefix is added.
    fn release(&mut self, before: &str, after: &str) -> Option<String> {
        let common = if after.starts_with(before) {
            before.len()
        } else {
            before
                .char_indices()
                .zip(after.chars())
                .find(|((_, a), b)| a != b)
                .map_or(before.len().min(after.len()), |((i, _), _)| i)
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        let delta = &after[common..];
        (!delta.is_empty()).then(|| delta.to_string())
    }

    /// Text still held back (an incomplete character at the very end), as the
    /// decoder renders it: flushed when generation ends.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>, String> {
        let skip = self.skip_special_tokens;
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let after = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        Ok(self.release(&before, &after))
    }
}
