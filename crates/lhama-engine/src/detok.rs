//! Incremental, UTF-8-safe detokenization: text is released only once the
//! tokens seen so far decode to whole characters, so a character split over
//! byte-fallback tokens ("ã" as <0xC3><0xA3>) never arrives broken, and the
//! concatenated deltas equal the decoding of all tokens at once.

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
        if after.len() <= before.len()
            || after.ends_with('\u{FFFD}')
            || !after.is_char_boundary(before.len())
        {
            return Ok(None);
        }
        let delta = after[before.len()..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(Some(delta))
    }

    /// Text still held back (an incomplete character at the very end), as the
    /// decoder renders it: flushed when generation ends.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>, String> {
        let skip = self.skip_special_tokens;
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let after = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if after.len() > before.len() && after.is_char_boundary(before.len()) {
            Ok(Some(after[before.len()..].to_string()))
        } else {
            Ok(None)
        }
    }
}
