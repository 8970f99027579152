//! Reading the tool calls Qwen3.5 writes.
//!
//! The template teaches the model this form (and renders past calls in it):
//!
//! ```text
//! <tool_call>
//! <function=NAME>
//! <parameter=ARG>
//! VALUE
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! String values are written raw, mappings and lists as JSON, other scalars with Python's
//! `str()` (`True`, `None`, `0.5`). Parsing inverts that: a value that reads as a JSON number,
//! boolean, null, object or array (or Python's `True`/`False`/`None`) gets that type, anything
//! else stays a string. Without the tool's schema this cannot tell the string `"3"` from the
//! number 3; both come back as the number.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
const FUNCTION_OPEN: &str = "<function=";
const FUNCTION_CLOSE: &str = "</function>";
const PARAMETER_OPEN: &str = "<parameter=";
const PARAMETER_CLOSE: &str = "</parameter>";

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    /// Parameters in the order the model wrote them.
    pub arguments: Map<String, Value>,
}

/// A `<tool_call>` block (or a stray tag) that could not be read; its text is left in place in
/// the remaining text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed tool call at byte {offset}: {reason}")]
pub struct ToolCallError {
    /// Byte offset of the block in the parsed text.
    pub offset: usize,
    /// The block as written.
    pub text: String,
    pub reason: String,
}

/// Extracts the tool calls of a finished assistant turn.
///
/// Returns the text outside the well-formed blocks (whitespace next to a removed block
/// dropped, pieces on either side of one joined by a blank line), the calls in order, and one
/// error per malformed block or stray tag. Malformed blocks stay in the text.
pub fn parse_tool_calls(text: &str) -> (String, Vec<ToolCall>, Vec<ToolCallError>) {
    let mut calls = Vec::new();
    let mut errors = Vec::new();
    let mut spans = Vec::new();
    let mut pos = 0;
    while let Some(found) = text[pos..].find(CALL_OPEN) {
        let start = pos + found;
        spans.push(Span::Plain(pos, start));
        match parse_block(text, start) {
            Ok((call, end)) => {
                calls.push(call);
                spans.push(Span::Call);
                pos = end;
            }
            Err((reason, end)) => {
                errors.push(ToolCallError {
                    offset: start,
                    text: text[start..end].to_owned(),
                    reason,
                });
                spans.push(Span::Malformed(start, end));
                pos = end;
            }
        }
    }
    spans.push(Span::Plain(pos, text.len()));
    for span in &spans {
        if let Span::Plain(from, to) = *span {
            report_stray_tags(text, from, to, &mut errors);
        }
    }
    errors.sort_by_key(|e| e.offset);

    // The text between removed calls, each piece trimmed where it touches one.
    let mut pieces = Vec::new();
    let mut piece = String::new();
    let mut after_call = false;
    for span in &spans {
        match *span {
            Span::Plain(from, to) | Span::Malformed(from, to) => piece.push_str(&text[from..to]),
            Span::Call => {
                pieces.push(trim_piece(&piece, after_call, true));
                piece.clear();
                after_call = true;
            }
        }
    }
    pieces.push(trim_piece(&piece, after_call, false));
    pieces.retain(|p| !p.is_empty());
    (pieces.join("\n\n"), calls, errors)
}

/// A stretch of the parsed text, as byte ranges.
enum Span {
    Plain(usize, usize),
    Malformed(usize, usize),
    Call,
}

fn trim_piece(piece: &str, after_call: bool, before_call: bool) -> String {
    let mut piece = piece;
    if after_call {
        piece = piece.trim_start();
    }
    if before_call {
        piece = piece.trim_end();
    }
    piece.to_owned()
}

/// Reports `</tool_call>` and `<function=` found outside any block: the model meant a call
/// but the text is not one, and dropping that silently would lose it.
fn report_stray_tags(text: &str, from: usize, to: usize, errors: &mut Vec<ToolCallError>) {
    for (tag, reason) in [
        (CALL_CLOSE, "</tool_call> without an opening <tool_call>"),
        (FUNCTION_OPEN, "<function=...> outside a <tool_call> block"),
    ] {
        for (at, _) in text[from..to].match_indices(tag) {
            let offset = from + at;
            let end = text[offset..].find('\n').map_or(text.len(), |n| offset + n);
            errors.push(ToolCallError {
                offset,
                text: text[offset..end].to_owned(),
                reason: reason.to_owned(),
            });
        }
    }
}

/// Parses the block opening at `start`. On success, the call and the end of the block; on
/// failure, the reason and how far the malformed block reaches: through its `</tool_call>` if
/// one comes before the next `<tool_call>`, else up to that next block (so one broken block
/// does not swallow the following good one), else to the end of the text.
fn parse_block(text: &str, start: usize) -> Result<(ToolCall, usize), (String, usize)> {
    let body = start + CALL_OPEN.len();
    let next_open = text[body..].find(CALL_OPEN).map(|n| body + n);
    let next_close = text[body..].find(CALL_CLOSE).map(|n| body + n);
    let fail_end = match (next_close, next_open) {
        (Some(close), open) if open.is_none_or(|open| close < open) => close + CALL_CLOSE.len(),
        (_, Some(open)) => open,
        _ => text.len(),
    };
    let limit = next_open.unwrap_or(text.len());
    parse_body(text, body, limit).map_err(|reason| (reason, fail_end))
}

fn parse_body(text: &str, body: usize, limit: usize) -> Result<(ToolCall, usize), String> {
    let mut cursor = Cursor {
        text,
        pos: body,
        limit,
    };
    cursor.skip_whitespace();
    if !cursor.eat(FUNCTION_OPEN) {
        return Err(match cursor.rest().is_empty() {
            true => "unclosed <tool_call> with no <function=...>".to_owned(),
            false => format!(
                "expected <function=NAME> after <tool_call>, found {}",
                cursor.preview()
            ),
        });
    }
    let name = cursor.tag_name("function")?;
    let mut arguments = Map::new();
    loop {
        cursor.skip_whitespace();
        if cursor.eat(FUNCTION_CLOSE) {
            break;
        }
        if cursor.eat(PARAMETER_OPEN) {
            let parameter = cursor.tag_name("parameter")?;
            let Some(len) = cursor.rest().find(PARAMETER_CLOSE) else {
                return Err(format!(
                    "unclosed <parameter={parameter}> in <function={name}>"
                ));
            };
            let raw = &text[cursor.pos..cursor.pos + len];
            cursor.pos += len + PARAMETER_CLOSE.len();
            if arguments.contains_key(&parameter) {
                return Err(format!(
                    "parameter {parameter:?} of <function={name}> is given twice"
                ));
            }
            arguments.insert(parameter, typed_value(raw));
            continue;
        }
        return Err(if cursor.rest().is_empty() {
            format!("unclosed <function={name}>")
        } else {
            format!(
                "expected <parameter=...> or </function> in <function={name}>, found {}",
                cursor.preview()
            )
        });
    }
    cursor.skip_whitespace();
    if !cursor.eat(CALL_CLOSE) {
        return Err(if cursor.rest().is_empty() {
            format!("unclosed <tool_call> after </function> of {name:?}")
        } else {
            format!(
                "expected </tool_call> after </function>, found {}",
                cursor.preview()
            )
        });
    }
    Ok((ToolCall { name, arguments }, cursor.pos))
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    /// Where the next `<tool_call>` begins: a block never reaches into the next one.
    limit: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..self.limit]
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// The `NAME>` after `<function=` or `<parameter=`.
    fn tag_name(&mut self, tag: &str) -> Result<String, String> {
        let rest = self.rest();
        let Some(end) = rest.find('>') else {
            return Err(format!("unclosed <{tag}= tag"));
        };
        let name = rest[..end].trim();
        if name.is_empty() {
            return Err(format!("<{tag}=> has no name"));
        }
        if name.contains(['<', '\n']) {
            return Err(format!("malformed <{tag}= name {:?}", &rest[..end]));
        }
        let name = name.to_owned();
        self.pos += end + 1;
        Ok(name)
    }

    fn preview(&self) -> String {
        let rest = self.rest();
        let cut = rest.char_indices().nth(30).map_or(rest.len(), |(i, _)| i);
        format!("{:?}", &rest[..cut])
    }
}

/// A parameter value: the newline the template puts on each side removed, then typed.
fn typed_value(raw: &str) -> Value {
    let raw = raw.strip_prefix('\n').unwrap_or(raw);
    let raw = raw.strip_suffix('\n').unwrap_or(raw);
    match raw.trim() {
        "True" => return Value::Bool(true),
        "False" => return Value::Bool(false),
        "None" => return Value::Null,
        _ => {}
    }
    match serde_json::from_str::<Value>(raw) {
        // A quoted string stays as written: the template writes strings raw, so the quotes
        // are part of the value.
        Ok(Value::String(_)) | Err(_) => Value::String(raw.to_owned()),
        Ok(value) => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn values_are_typed() {
        let cases = [
            ("\nOslo\n", json!("Oslo")),
            ("\n3\n", json!(3)),
            ("\n0.5\n", json!(0.5)),
            ("\n1e-05\n", json!(1e-5)),
            ("\nTrue\n", json!(true)),
            ("\nfalse\n", json!(false)),
            ("\nNone\n", json!(null)),
            ("\nnull\n", json!(null)),
            ("\n{\"a\": [1, \"x\"]}\n", json!({"a": [1, "x"]})),
            ("\n\"quoted\"\n", json!("\"quoted\"")),
            ("\n\nlines\nof text\n\n", json!("\nlines\nof text\n")),
            ("\n\n", json!("")),
            ("no newlines", json!("no newlines")),
            ("\n007\n", json!("007")),
            ("\ninf\n", json!("inf")),
        ];
        for (raw, want) in cases {
            assert_eq!(typed_value(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn several_calls_and_the_text_before_them() {
        let text = "Let me check both.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_time>\n<parameter=tz>\nEurope/Oslo\n</parameter>\n<parameter=24h>\ntrue\n</parameter>\n</function>\n</tool_call>";
        let (rest, calls, errors) = parse_tool_calls(text);
        assert_eq!(rest, "Let me check both.");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            calls,
            vec![
                ToolCall {
                    name: "get_weather".into(),
                    arguments: args(json!({"city": "Oslo"}))
                },
                ToolCall {
                    name: "get_time".into(),
                    arguments: args(json!({"tz": "Europe/Oslo", "24h": true}))
                },
            ]
        );
    }

    #[test]
    fn a_call_without_parameters_and_no_text() {
        let (rest, calls, errors) =
            parse_tool_calls("<tool_call>\n<function=now>\n</function>\n</tool_call>");
        assert_eq!((rest.as_str(), errors.len()), ("", 0));
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "now".into(),
                arguments: Map::new()
            }]
        );
    }

    #[test]
    fn a_value_may_contain_the_closing_tags_of_outer_elements() {
        let text = "<tool_call>\n<function=write>\n<parameter=body>\nsee </function> and </tool_call>\n</parameter>\n</function>\n</tool_call>";
        let (rest, calls, errors) = parse_tool_calls(text);
        assert!(errors.is_empty() && rest.is_empty(), "{errors:?} {rest:?}");
        assert_eq!(
            calls[0].arguments["body"],
            json!("see </function> and </tool_call>")
        );
    }

    #[test]
    fn malformed_blocks_stay_in_the_text_and_are_reported() {
        let good = "<tool_call>\n<function=ok>\n</function>\n</tool_call>";
        let cases = [
            ("<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n", "unclosed <function=f>"),
            ("<tool_call>\n<function=f>\n<parameter=a>\n1\n", "unclosed <parameter=a>"),
            ("<tool_call>\n<parameter=a>\n1\n</parameter>\n</tool_call>", "expected <function=NAME>"),
            ("<tool_call>\n<function=>\n</function>\n</tool_call>", "<function=> has no name"),
            ("<tool_call>\n<function=f\n</function>\n</tool_call>", "malformed <function= name"),
            ("<tool_call>\n<function=f>\nstray\n</function>\n</tool_call>", "expected <parameter=...> or </function>"),
            ("<tool_call>\n<function=f>\n</function>\n<function=g>\n</function>\n</tool_call>", "expected </tool_call> after </function>"),
            ("<tool_call>\n<function=f>\n</function>\n", "unclosed <tool_call> after </function>"),
            ("<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n<parameter=a>\n2\n</parameter>\n</function>\n</tool_call>", "given twice"),
            ("<tool_call>", "unclosed <tool_call> with no <function=...>"),
        ];
        for (bad, reason) in cases {
            // Before a good block: the good one must still be found.
            let text = format!("Intro\n{bad}\n{good}");
            let (rest, calls, errors) = parse_tool_calls(&text);
            assert_eq!(calls.len(), 1, "{bad:?}: {calls:?}");
            assert_eq!(errors.len(), 1, "{bad:?}: {errors:?}");
            assert!(
                errors[0].reason.contains(reason),
                "{bad:?}: {:?}",
                errors[0].reason
            );
            assert_eq!(errors[0].offset, "Intro\n".len(), "{bad:?}");
            assert!(
                bad.starts_with(errors[0].text.trim_end()),
                "{bad:?}: {:?}",
                errors[0].text
            );
            assert_eq!(rest, format!("Intro\n{bad}").trim_end(), "{bad:?}");
            // Alone, at the end.
            let (rest, calls, errors) = parse_tool_calls(bad);
            assert!(calls.is_empty() && errors.len() == 1, "{bad:?}");
            assert_eq!(rest, bad);
        }
    }

    #[test]
    fn stray_tags_are_reported() {
        let (rest, calls, errors) =
            parse_tool_calls("text </tool_call> and <function=f>\n</function>");
        assert!(calls.is_empty());
        assert_eq!(rest, "text </tool_call> and <function=f>\n</function>");
        let reasons: Vec<_> = errors
            .iter()
            .map(|e| (e.offset, e.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (5, "</tool_call> without an opening <tool_call>"),
                (22, "<function=...> outside a <tool_call> block")
            ]
        );
    }

    #[test]
    fn text_after_a_call_is_kept() {
        let (rest, calls, _) =
            parse_tool_calls("Before\n<tool_call>\n<function=f>\n</function>\n</tool_call>\nAfter");
        assert_eq!(calls.len(), 1);
        assert_eq!(rest, "Before\n\nAfter");
    }
}
