//! Separating the model's reasoning from its answer while it is being generated.
//!
//! With thinking on, Qwen3.5's generation prompt ends inside an open `<think>\n`, so the model
//! writes its reasoning, `</think>`, and then the answer. The template renders a past turn as
//! `<think>\n` + reasoning + `\n</think>\n\n` + answer, with the reasoning stripped of
//! surrounding newlines and the answer of leading ones; the splitter undoes exactly that, so the
//! pieces it returns can be sent back as `reasoning_content` and `content` unchanged.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A labelled piece of generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Reasoning, inside `<think>…</think>`.
    Thinking(String),
    /// The answer.
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing generated yet and the prompt did not open a think block: a `<think>` here (after
    /// newlines) opens one anyway.
    Start,
    /// Inside the think block; `fresh` until its first character that is not a newline.
    Thinking { fresh: bool },
    /// The answer; `fresh` until its first character that is not a newline.
    Text { fresh: bool },
}

/// Streams generated text into [`Segment`]s. Tags may arrive split across pushes; text is
/// released as soon as it cannot be part of a tag (or of the newlines that are dropped before
/// `</think>`), and no part of a tag is ever released.
#[derive(Debug, Clone)]
pub struct ThinkingSplitter {
    phase: Phase,
    /// Received but not yet released: a possible tag prefix, or newlines that may precede
    /// `</think>`.
    held: String,
    /// A think block was open at some point (possibly an empty one).
    opened: bool,
}

impl ThinkingSplitter {
    /// `in_thinking`: the prompt ended inside an open think block (Qwen3.5 with thinking on).
    pub fn new(in_thinking: bool) -> Self {
        ThinkingSplitter {
            phase: if in_thinking {
                Phase::Thinking { fresh: true }
            } else {
                Phase::Start
            },
            held: String::new(),
            opened: in_thinking,
        }
    }

    /// A splitter for generation after `prompt`: in thinking when the prompt ends with an
    /// open `<think>` (trailing whitespace aside).
    pub fn for_prompt(prompt: &str) -> Self {
        Self::new(prompt.trim_end().ends_with(OPEN))
    }

    /// Whether text pushed now would be reasoning.
    pub fn in_thinking(&self) -> bool {
        matches!(self.phase, Phase::Thinking { .. })
    }

    /// Feeds newly decoded text; returns what can be released now.
    pub fn push(&mut self, text: &str) -> Vec<Segment> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.phase {
                Phase::Start => {
                    drop_leading_newlines(&mut self.held);
                    if let Some(rest) = self.held.strip_prefix(OPEN) {
                        self.held = rest.to_owned();
                        self.phase = Phase::Thinking { fresh: true };
                        self.opened = true;
                        continue;
                    }
                    if OPEN.starts_with(self.held.as_str()) {
                        return out;
                    }
                    // The newlines are gone already, so the answer starts here.
                    self.phase = Phase::Text { fresh: false };
                }
                Phase::Thinking { fresh } => {
                    if fresh {
                        drop_leading_newlines(&mut self.held);
                        if self.held.is_empty() {
                            return out;
                        }
                        self.phase = Phase::Thinking { fresh: false };
                    }
                    if let Some(at) = self.held.find(CLOSE) {
                        let reasoning = self.held[..at].trim_end_matches('\n');
                        emit(&mut out, Segment::Thinking(reasoning.to_owned()));
                        self.held.drain(..at + CLOSE.len());
                        self.phase = Phase::Text { fresh: true };
                        continue;
                    }
                    let tag_start = self.held.len() - partial_suffix(&self.held, CLOSE);
                    let release = self.held[..tag_start].trim_end_matches('\n').len();
                    emit(&mut out, Segment::Thinking(self.held[..release].to_owned()));
                    self.held.drain(..release);
                    return out;
                }
                Phase::Text { fresh } => {
                    if fresh {
                        drop_leading_newlines(&mut self.held);
                        if self.held.is_empty() {
                            return out;
                        }
                        self.phase = Phase::Text { fresh: false };
                    }
                    emit(&mut out, Segment::Text(std::mem::take(&mut self.held)));
                    return out;
                }
            }
        }
    }

    /// Releases what was held back at the end of generation: an unfinished tag is plain text
    /// after all; newlines that were waiting for `</think>` are dropped, as the template would.
    pub fn finish(&mut self) -> Vec<Segment> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        match self.phase {
            Phase::Start | Phase::Text { .. } => emit(&mut out, Segment::Text(held)),
            Phase::Thinking { .. } => {
                emit(
                    &mut out,
                    Segment::Thinking(held.trim_end_matches('\n').to_owned()),
                );
            }
        }
        out
    }
}

/// Splits a whole generated output into reasoning and answer; `None` when there was no think
/// block at all.
pub fn split_thinking(output: &str, in_thinking: bool) -> (Option<String>, String) {
    let mut splitter = ThinkingSplitter::new(in_thinking);
    let mut segments = splitter.push(output);
    segments.extend(splitter.finish());
    let mut thinking: Option<String> = splitter.opened.then(String::new);
    let mut text = String::new();
    for segment in segments {
        match segment {
            Segment::Thinking(t) => thinking.get_or_insert_with(String::new).push_str(&t),
            Segment::Text(t) => text.push_str(&t),
        }
    }
    (thinking, text)
}

fn drop_leading_newlines(text: &mut String) {
    let newlines = text.len() - text.trim_start_matches('\n').len();
    text.drain(..newlines);
}

/// Adds a segment, merging it into the previous one of the same kind; empty ones are skipped.
fn emit(out: &mut Vec<Segment>, segment: Segment) {
    match (out.last_mut(), segment) {
        (_, Segment::Thinking(t) | Segment::Text(t)) if t.is_empty() => {}
        (Some(Segment::Thinking(last)), Segment::Thinking(t)) => last.push_str(&t),
        (Some(Segment::Text(last)), Segment::Text(t)) => last.push_str(&t),
        (_, segment) => out.push(segment),
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `tag`.
pub(crate) fn partial_suffix(text: &str, tag: &str) -> usize {
    let longest = text.len().min(tag.len().saturating_sub(1));
    (1..=longest)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_suffix_finds_tag_prefixes() {
        assert_eq!(partial_suffix("abc</thi", CLOSE), 5);
        assert_eq!(partial_suffix("abc<", CLOSE), 1);
        assert_eq!(partial_suffix("abc</think>", CLOSE), 0);
        assert_eq!(partial_suffix("abc", CLOSE), 0);
        assert_eq!(partial_suffix("é<", CLOSE), 1);
        assert_eq!(partial_suffix("", CLOSE), 0);
    }

    #[test]
    fn releases_text_as_early_as_it_can() {
        let mut s = ThinkingSplitter::new(true);
        assert_eq!(s.push("\nLet me"), vec![Segment::Thinking("Let me".into())]);
        assert_eq!(s.push(" think\n"), vec![Segment::Thinking(" think".into())]);
        // The newline might precede `</think>`, so it waits, and so does the tag prefix.
        assert_eq!(s.push("</th"), vec![]);
        assert_eq!(s.push("ink>\n\nAns"), vec![Segment::Text("Ans".into())]);
        assert_eq!(s.push("wer\n"), vec![Segment::Text("wer\n".into())]);
        assert_eq!(s.finish(), vec![]);
    }

    #[test]
    fn a_false_tag_start_is_released() {
        let mut s = ThinkingSplitter::new(true);
        assert_eq!(s.push("a\n</th"), vec![Segment::Thinking("a".into())]);
        assert_eq!(s.push("e>"), vec![Segment::Thinking("\n</the>".into())]);
    }

    #[test]
    fn without_thinking_a_leading_think_block_is_still_recognised() {
        assert_eq!(
            split_thinking("\n<think>\nr\n</think>\n\nx", false),
            (Some("r".into()), "x".into())
        );
        assert_eq!(split_thinking("<thin", false), (None, "<thin".into()));
        assert_eq!(
            split_thinking("plain <think>", false),
            (None, "plain <think>".into())
        );
        assert_eq!(split_thinking("\n\nplain", false), (None, "plain".into()));
        assert_eq!(
            split_thinking("<think>\n\n</think>\n\nx", false),
            (Some(String::new()), "x".into())
        );
    }

    #[test]
    fn an_unclosed_block_is_all_thinking() {
        assert_eq!(
            split_thinking("half a thought\n\n</thi", true),
            (Some("half a thought\n\n</thi".into()), String::new())
        );
        assert_eq!(
            split_thinking("done\n\n", true),
            (Some("done".into()), String::new())
        );
    }

    #[test]
    fn for_prompt_reads_the_generation_prompt() {
        assert!(ThinkingSplitter::for_prompt("<|im_start|>assistant\n<think>\n").in_thinking());
        assert!(
            !ThinkingSplitter::for_prompt("<|im_start|>assistant\n<think>\n\n</think>\n\n")
                .in_thinking()
        );
        assert!(!ThinkingSplitter::for_prompt("<|im_start|>assistant\n").in_thinking());
    }
}
