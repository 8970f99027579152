//! Python's spellings of template values.
//!
//! Chat templates are written against jinja2, where `{{ x }}` and `x|string` call Python's
//! `str()`: `True`, `None`, `1e-05`, `['a', 'b']`. Models were trained on prompts rendered that
//! way, so a renderer has to spell values the same way to give them the same prompt.

use minijinja::value::{Value, ValueKind};

/// Python's `str.isspace()` for one character: Rust's `White_Space` set plus the four ASCII
/// information separators, which Python also treats as whitespace (`str.strip()`, `split()`).
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `repr(float)` (also what `str(float)` gives): the shortest digits that read back as the same
/// number, in fixed notation for decimal exponents -4..16 and scientific notation outside.
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // Rust's `{:e}` and `{}` both print the shortest round-tripping digits, as Python does; only
    // the choice of notation and the exponent's spelling have to be brought in line.
    let scientific = format!("{f:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return scientific;
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return scientific;
    };
    if (-4..16).contains(&exponent) {
        let mut fixed = f.to_string();
        if !fixed.contains('.') {
            fixed.push_str(".0");
        }
        fixed
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// A number the way Python prints it: integers in decimal, floats with [`float_repr`].
pub(crate) fn number_str(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) => float_repr(f),
        Err(_) => value.to_string(),
    }
}

/// Python's `str(value)`, which is what jinja2 writes for `{{ value }}` and `value|string`.
/// Undefined is the empty string, as with jinja2's default `Undefined`.
pub(crate) fn to_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => {
            let mut out = String::new();
            write_repr(&mut out, value);
            out
        }
    }
}

/// Python's `repr(value)`; containers print their items this way.
fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&number_str(value)),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &key);
                    out.push_str(": ");
                    write_repr(out, &value.get_item(&key).unwrap_or_default());
                }
            }
            out.push('}');
        }
        // Iterators, macros, namespaces: Python would print an object address; there is
        // nothing to match, so minijinja's own spelling is as good as any.
        _ => out.push_str(&value.to_string()),
    }
}

/// `repr(str)`: single quotes unless the text holds a single quote and no double quote.
fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let code = c as u32;
                if code < 0x100 {
                    out.push_str(&format!("\\x{code:02x}"));
                } else if code < 0x10000 {
                    out.push_str(&format!("\\u{code:04x}"));
                } else {
                    out.push_str(&format!("\\U{code:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// An approximation of Python's `str.isprintable()` (which needs the Unicode category tables):
/// control characters, the separators other than space, and the common format characters.
fn is_printable(c: char) -> bool {
    let code = c as u32;
    !(code < 0x20
        || (0x7f..=0xa0).contains(&code)
        || code == 0xad
        || code == 0x1680
        || (0x2000..=0x200f).contains(&code)
        || (0x2028..=0x202f).contains(&code)
        || (0x205f..=0x2064).contains(&code)
        || (0x2066..=0x206f).contains(&code)
        || code == 0x3000
        || code == 0xfeff
        || (0xe000..=0xf8ff).contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_spelled_like_python_repr() {
        let cases: &[(f64, &str)] = &[
            (0.5, "0.5"),
            (3.0, "3.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.00015, "0.00015"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (912.5, "912.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for &(f, want) in cases {
            assert_eq!(float_repr(f), want, "repr of {f:?}");
        }
    }

    #[test]
    fn str_of_values_matches_python() {
        assert_eq!(to_str(&Value::from(true)), "True");
        assert_eq!(to_str(&Value::from(false)), "False");
        assert_eq!(to_str(&Value::from(())), "None");
        assert_eq!(to_str(&Value::UNDEFINED), "");
        assert_eq!(to_str(&Value::from(3)), "3");
        assert_eq!(to_str(&Value::from(-7i64)), "-7");
        assert_eq!(to_str(&Value::from(1e-5)), "1e-05");
        assert_eq!(to_str(&Value::from("it's")), "it's");
        let list = Value::from_serialize(serde_json::json!([1, "a", true, null, 2.5, "it's"]));
        assert_eq!(to_str(&list), "[1, 'a', True, None, 2.5, \"it's\"]");
        let map = Value::from_serialize(serde_json::json!({"b": {"x": [1]}, "a": "q\"'\n"}));
        assert_eq!(to_str(&map), "{'b': {'x': [1]}, 'a': 'q\"\\'\\n'}");
        let odd = Value::from("\u{0}\u{7f}\u{a0}é\u{2028}\u{1F600}\\");
        assert_eq!(
            to_str(&Value::from_serialize(vec![odd])),
            "['\\x00\\x7f\\xa0é\\u2028\u{1F600}\\\\']"
        );
    }

    #[test]
    fn python_whitespace_includes_information_separators() {
        for c in ['\u{1c}', '\u{1f}', ' ', '\t', '\u{85}', '\u{3000}'] {
            assert!(is_space(c), "{c:?}");
        }
        for c in ['\u{1b}', 'a', '\u{200b}'] {
            assert!(!is_space(c), "{c:?}");
        }
    }
}
