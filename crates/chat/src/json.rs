//! The `tojson` filter as transformers defines it for chat templates.
//!
//! transformers replaces jinja2's `tojson` (which HTML-escapes `<>&'`) with
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, so tool
//! schemas reach the model with `", "`/`": "` separators, keys in the order given, non-ASCII kept
//! and nothing HTML-escaped. minijinja's own `tojson` differs on all of these.

use minijinja::value::{ArgType, Kwargs, Rest, Value, ValueKind};
use minijinja::{Error, ErrorKind};

use crate::python::float_repr;

/// The arguments of Python's `json.dumps` that transformers' `tojson` forwards.
#[derive(Debug, Clone)]
struct DumpOptions {
    ensure_ascii: bool,
    /// The text of one indentation level; `None` writes everything on one line.
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// The filter: `value|tojson`, `value|tojson(indent=2)`, and the other `json.dumps` arguments
/// transformers accepts, positionally in its order (`ensure_ascii, indent, separators,
/// sort_keys`) or by name.
pub(crate) fn tojson_filter(value: &Value, args: Rest<Value>) -> Result<Value, Error> {
    let mut positional = args.0;
    let kwargs = match positional.last() {
        Some(last) if last.is_kwargs() => {
            let last = positional.pop().unwrap_or_default();
            Kwargs::from_value(Some(&last))?
        }
        _ => Kwargs::from_iter(std::iter::empty::<(String, Value)>()),
    };
    if positional.len() > 4 {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson() takes at most 4 arguments (ensure_ascii, indent, separators, sort_keys)",
        ));
    }
    let mut positional = positional.into_iter();
    let ensure_ascii = pick(positional.next(), &kwargs, "ensure_ascii")?;
    let indent = pick(positional.next(), &kwargs, "indent")?;
    let separators = pick(positional.next(), &kwargs, "separators")?;
    let sort_keys = pick(positional.next(), &kwargs, "sort_keys")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(indent_text(&v)?),
    };
    // json.dumps drops the space after "," when indenting, as the newline already separates.
    let (item_separator, key_separator) = match separators {
        Some(v) if !v.is_none() && !v.is_undefined() => separator_pair(&v)?,
        _ => (
            if indent.is_some() { "," } else { ", " }.to_owned(),
            ": ".to_owned(),
        ),
    };
    let options = DumpOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_separator,
        key_separator,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    write_value(&mut out, value, &options, 0)?;
    Ok(Value::from(out))
}

fn pick(positional: Option<Value>, kwargs: &Kwargs, name: &str) -> Result<Option<Value>, Error> {
    let named: Option<Value> = kwargs.get(name)?;
    match (positional, named) {
        (Some(_), Some(_)) => Err(Error::new(
            ErrorKind::TooManyArguments,
            format!("tojson() got multiple values for argument '{name}'"),
        )),
        (p, n) => Ok(p.or(n)),
    }
}

/// `indent` is a count of spaces or the indentation text itself, as in `json.dumps`.
fn indent_text(value: &Value) -> Result<String, Error> {
    if let Some(s) = value.as_str() {
        return Ok(s.to_owned());
    }
    if value.is_integer() {
        let n = i64::try_from(value.clone())?;
        return Ok(" ".repeat(usize::try_from(n).unwrap_or(0)));
    }
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "tojson: indent must be an integer or a string, got {}",
            value.kind()
        ),
    ))
}

fn separator_pair(value: &Value) -> Result<(String, String), Error> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidOperation,
            "tojson: separators must be a pair of strings (item_separator, key_separator)",
        )
    };
    if value.len() != Some(2) {
        return Err(bad());
    }
    let item = value.get_item_by_index(0)?;
    let key = value.get_item_by_index(1)?;
    match (item.as_str(), key.as_str()) {
        (Some(item), Some(key)) => Ok((item.to_owned(), key.to_owned())),
        _ => Err(bad()),
    }
}

fn write_value(
    out: &mut String,
    value: &Value,
    options: &DumpOptions,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), options),
        // Iterables (a reversed list, a slice) are lists to the template author; Python would
        // refuse a generator, but refusing here would only make templates fail for no gain.
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), options, depth, |out, i| {
                write_value(out, &items[i], options, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_string(&key)?, item));
            }
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', entries.len(), options, depth, |out, i| {
                let (key, item) = &entries[i];
                write_string(out, key, options);
                out.push_str(&options.key_separator);
                write_value(out, item, options, depth + 1)
            })?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// Lays out `[...]`/`{...}` the way `json.dumps` does, with or without indentation; empty
/// containers stay `[]`/`{}` even when indenting.
fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    options: &DumpOptions,
    depth: usize,
    mut write_item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &options.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&options.item_separator);
        }
        newline(out, depth + 1);
        write_item(out, i)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        out.push_str(&value.to_string());
        return;
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_nan() => out.push_str("NaN"),
        Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
        Ok(f) => out.push_str(&float_repr(f)),
        Err(_) => out.push_str(&value.to_string()),
    }
}

/// `json.dumps` turns `True`/`None`/number keys into strings rather than failing.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key);
            Ok(s)
        }
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

/// Python's JSON string escaping: only `"`, `\` and control characters, plus everything
/// outside printable ASCII when `ensure_ascii` is set (as `\uXXXX`, astral characters as
/// surrogate pairs). Hex digits are lowercase, as Python writes them.
fn write_string(out: &mut String, s: &str, options: &DumpOptions) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if options.ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;
    use serde_json::json;

    fn render(template: &str, value: serde_json::Value) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", super::tojson_filter);
        env.render_str(template, minijinja::context! { x => value })
            .unwrap_or_else(|e| panic!("{template}: {e}"))
    }

    #[test]
    fn default_layout_is_python_json_dumps() {
        let x = json!({"b": 1, "a": [1, 2.5, true, null, "<&>'\"\\"], "c": {}, "d": []});
        assert_eq!(
            render("{{ x|tojson }}", x),
            r#"{"b": 1, "a": [1, 2.5, true, null, "<&>'\"\\"], "c": {}, "d": []}"#
        );
    }

    #[test]
    fn non_ascii_is_kept_and_control_characters_escaped() {
        let x = json!("日本語 😀 é \u{1}\u{7f}\n\t\u{8}\u{c}\r\u{2028}");
        assert_eq!(
            render("{{ x|tojson }}", x.clone()),
            "\"日本語 😀 é \\u0001\u{7f}\\n\\t\\b\\f\\r\u{2028}\""
        );
        assert_eq!(
            render("{{ x|tojson(ensure_ascii=true) }}", x),
            "\"\\u65e5\\u672c\\u8a9e \\ud83d\\ude00 \\u00e9 \\u0001\\u007f\\n\\t\\b\\f\\r\\u2028\""
        );
    }

    #[test]
    fn indent_matches_json_dumps() {
        let x = json!({"a": [1, {"b": null}], "e": [], "f": {}});
        assert_eq!(
            render("{{ x|tojson(indent=2) }}", x.clone()),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"e\": [],\n  \"f\": {}\n}"
        );
        assert_eq!(
            render("{{ x|tojson(indent='\\t') }}", json!([1])),
            "[\n\t1\n]"
        );
        assert_eq!(
            render("{{ x|tojson(indent=0) }}", json!([1, 2])),
            "[\n1,\n2\n]"
        );
        assert_eq!(render("{{ x|tojson(false, 1) }}", json!([1])), "[\n 1\n]");
    }

    #[test]
    fn separators_and_sort_keys() {
        let x = json!({"b": 1, "a": 2});
        assert_eq!(
            render("{{ x|tojson(separators=(',', ':')) }}", x.clone()),
            r#"{"b":1,"a":2}"#
        );
        assert_eq!(
            render("{{ x|tojson(sort_keys=true) }}", x),
            r#"{"a": 2, "b": 1}"#
        );
    }

    #[test]
    fn numbers_are_spelled_like_python() {
        let x = json!([1e-5, 1e16, 3.0, -0.5, 12345678901234567890u64, -3]);
        assert_eq!(
            render("{{ x|tojson }}", x),
            "[1e-05, 1e+16, 3.0, -0.5, 12345678901234567890, -3]"
        );
    }

    #[test]
    fn undefined_and_unknown_arguments_fail() {
        let mut env = Environment::new();
        env.add_filter("tojson", super::tojson_filter);
        assert!(env.render_str("{{ nothing|tojson }}", ()).is_err());
        assert!(env.render_str("{{ 1|tojson(bogus=1) }}", ()).is_err());
        assert!(env
            .render_str("{{ 1|tojson(false, ensure_ascii=true) }}", ())
            .is_err());
    }
}
