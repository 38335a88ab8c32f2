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
        if let Some(released) = self.push_bytes(tokenizer) {
            return Ok(released);
        }
        let skip = self.skip_special_tokens;
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let after = tokenizer.decode(&self.ids[self.prefix_offset..], skip)?;
        if after.ends_with('\u{FFFD}') && self.may_still_complete(tokenizer) {
            // A character whose remaining bytes are still to come.
            return Ok(None);
        }
        Ok(self.release(&before, &after))
    }

    /// When every held token is a byte-fallback token and text was released
    /// before them, their text is their bytes: held while they are the start
    /// of a character, else released (a whole character, or U+FFFD per byte
    /// as the tokenizer's own decoder writes an invalid run). Decoding them
    /// with the window would merge them with earlier invalid bytes.
    fn push_bytes(&mut self, tokenizer: &Tokenizer) -> Option<Option<String>> {
        let held = &self.ids[self.read_offset..];
        // Most tokens are not bytes: out before allocating anything.
        if self.read_offset == 0
            || held.len() > 4
            || held.iter().any(|&id| tokenizer.byte_fallback(id).is_none())
        {
            return None;
        }
        let bytes: Vec<u8> = held
            .iter()
            .map(|&id| tokenizer.byte_fallback(id))
            .collect::<Option<_>>()?;
        if held.len() <= 3 && incomplete_utf8_tail(&bytes) {
            return Some(None);
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => "\u{FFFD}".repeat(e.into_bytes().len()),
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Some(Some(text))
    }

    /// Whether the held tokens end in byte-fallback tokens that are the
    /// start of a UTF-8 character (so a later byte token may complete it).
    /// Anything else is released at once, U+FFFD included: a run of invalid
    /// bytes (`<0xFF>`) must not hold all text back, and the held window,
    /// decoded again at every token, stays at most 3 tokens long.
    fn may_still_complete(&self, tokenizer: &Tokenizer) -> bool {
        let held = &self.ids[self.read_offset..];
        if held.len() > 3 {
            return false;
        }
        let bytes: Vec<u8> = held
            .iter()
            .rev()
            .map_while(|&id| tokenizer.byte_fallback(id))
            .collect::<Vec<u8>>()
            .into_iter()
            .rev()
            .collect();
        incomplete_utf8_tail(&bytes)
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

/// Whether `bytes` ends with the first 1-3 bytes of a UTF-8 character that
/// further bytes could complete (lead byte and continuation ranges checked
/// as in RFC 3629, so overlong forms and surrogates do not count).
pub fn incomplete_utf8_tail(bytes: &[u8]) -> bool {
    // The lead byte is at most 3 bytes from the end.
    let Some(lead_at) = (bytes.len().saturating_sub(3)..bytes.len())
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)
    else {
        return false;
    };
    let tail = &bytes[lead_at..];
    let (need, second) = match tail[0] {
        0xC2..=0xDF => (2, 0x80..=0xBF),
        0xE0 => (3, 0xA0..=0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80..=0xBF),
        0xED => (3, 0x80..=0x9F),
        0xF0 => (4, 0x90..=0xBF),
        0xF1..=0xF3 => (4, 0x80..=0xBF),
        0xF4 => (4, 0x80..=0x8F),
        _ => return false,
    };
    tail.len() < need && tail.get(1).is_none_or(|b| second.contains(b))
}

#[cfg(test)]
mod tests {
    use super::incomplete_utf8_tail;

    #[test]
    fn only_starts_of_real_characters_may_complete() {
        for (bytes, want) in [
            (&[0xC3][..], true),
            (&[0xE6, 0x97], true),
            (&[0xF0, 0x9F, 0x99], true),
            (&[0x61, 0xC3], true),
            (&[0xC3, 0xA3], false), // complete
            (&[0xFF], false),
            (&[0xC3, 0xFF], false),
            (&[0x80], false),
            (&[0xC0], false),       // overlong lead
            (&[0xE0, 0x80], false), // overlong
            (&[0xED, 0xA0], false), // surrogate
            (&[0xF4, 0x90], false), // above U+10FFFF
            (&[0xF0, 0x9F, 0x99, 0x82], false),
            (&[], false),
        ] {
            assert_eq!(incomplete_utf8_tail(bytes), want, "{bytes:02X?}");
        }
    }
}
