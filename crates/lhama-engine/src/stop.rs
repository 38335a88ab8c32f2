//! Stop strings over streamed text: text that might turn out to be the start
//! of a stop string is held back, and a match truncates the output before it.

#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    /// Text released by the detokenizer and not yet sent.
    held: String,
}

/// What to send after a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Send this text (possibly empty) and go on.
    Continue(String),
    /// A stop string matched: send this text (before the match) and finish.
    Stopped(String),
}

impl StopText {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        self.held.push_str(delta);
        if self.stops.is_empty() {
            return StopOutcome::Continue(std::mem::take(&mut self.held));
        }
        // Earliest match of any stop string in the held text.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(at);
            return StopOutcome::Stopped(std::mem::take(&mut self.held));
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep);
        StopOutcome::Continue(std::mem::replace(&mut self.held, rest))
    }

    /// Releases whatever is held when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_possible_starts_and_truncates_at_the_match() {
        let mut s = StopText::new(vec!["</fim>".into(), "\n\n".into()]);
        assert_eq!(s.push("Olá </f"), StopOutcome::Continue("Olá ".into()));
        assert_eq!(s.push("oo"), StopOutcome::Continue("</foo".into()));
        assert_eq!(s.push(" a\n"), StopOutcome::Continue(" a".into()));
        assert_eq!(s.push("\nmais"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn a_match_inside_one_delta_and_flush() {
        let mut s = StopText::new(vec!["fim".into()]);
        assert_eq!(s.push("o fim do"), StopOutcome::Stopped("o ".into()));
        let mut s = StopText::new(vec!["fim".into()]);
        assert_eq!(s.push("ã f"), StopOutcome::Continue("ã ".into()));
        assert_eq!(s.flush(), "f");
    }
}
