//! Stop strings over streamed text.
//!
//! A stop string can arrive split over several decoded chunks (`"<|im"` + `"_end|>"`), so the
//! end of each chunk that could still grow into one is held back until the next chunk shows
//! whether it does. Nothing of a stop string is ever released.

/// Streaming matcher for a set of stop strings.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    matched: Option<usize>,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match before any text).
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StopMatcher {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s: &String| !s.is_empty())
                .collect(),
            held: String::new(),
            matched: None,
        }
    }

    /// Feeds decoded text. Returns the text that is safe to release and whether a stop string
    /// was found; once stopped, everything from the stop string on is discarded and later
    /// pushes release nothing.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.matched.is_some() {
            return (String::new(), true);
        }
        self.held.push_str(text);
        // The earliest match wins; at the same position, the longest stop string is reported.
        let mut best: Option<(usize, usize)> = None;
        for (i, stop) in self.stops.iter().enumerate() {
            if let Some(at) = self.held.find(stop.as_str()) {
                let better = match best {
                    None => true,
                    Some((best_at, best_i)) => {
                        at < best_at || (at == best_at && stop.len() > self.stops[best_i].len())
                    }
                };
                if better {
                    best = Some((at, i));
                }
            }
        }
        if let Some((at, i)) = best {
            self.matched = Some(i);
            let mut out = std::mem::take(&mut self.held);
            out.truncate(at);
            return (out, true);
        }
        let keep = self
            .stops
            .iter()
            .map(|stop| crate::thinking::partial_suffix(&self.held, stop))
            .max()
            .unwrap_or(0);
        let release = self.held.len() - keep;
        let out = self.held[..release].to_owned();
        self.held.drain(..release);
        (out, false)
    }

    /// At the end of generation: releases the text held back as a possible stop-string start.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The stop string that ended the stream, if any.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_only_what_could_still_become_a_stop() {
        let mut m = StopMatcher::new(["<|im_end|>", "STOP"]);
        assert_eq!(m.push("hello <|im"), ("hello ".to_owned(), false));
        assert_eq!(m.push("_x"), ("<|im_x".to_owned(), false));
        assert_eq!(m.push(" ST"), (" ".to_owned(), false));
        assert_eq!(m.push("OP and more"), (String::new(), true));
        assert_eq!(m.matched(), Some("STOP"));
        assert_eq!(m.push("ignored"), (String::new(), true));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn earliest_match_wins_and_finish_flushes() {
        let mut m = StopMatcher::new(["bc", "abcd", ""]);
        assert_eq!(m.push("xabc"), ("xa".to_owned(), true));
        assert_eq!(m.matched(), Some("bc"));

        let mut m = StopMatcher::new(["</s>"]);
        assert_eq!(m.push("é</"), ("é".to_owned(), false));
        assert_eq!(m.finish(), "</");

        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(m.push("abc"), ("abc".to_owned(), false));
    }
}
