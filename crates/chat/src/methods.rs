//! Python methods called on template values (`content.startswith(...)`, `x.items()`).
//!
//! jinja2 templates run on Python objects, so chat templates call `str` and `dict` methods
//! freely; minijinja has none of them and hands unknown method calls to this callback. The
//! semantics follow CPython (whitespace set, `split()` without a separator, `maxsplit`).

use minijinja::value::{from_args, Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

use crate::python::{is_space, to_str};

pub(crate) fn call_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::String => string_method(value.as_str().unwrap_or_default(), method, args),
        ValueKind::Map => map_method(value, method, args),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    match method {
        "startswith" | "endswith" => {
            let (affix,): (Value,) = from_args(args)?;
            let affixes = string_or_strings(&affix, method)?;
            let hit = if method == "startswith" {
                affixes.iter().any(|a| s.starts_with(a.as_str()))
            } else {
                affixes.iter().any(|a| s.ends_with(a.as_str()))
            };
            Ok(Value::from(hit))
        }
        "strip" | "lstrip" | "rstrip" => {
            let (chars,): (Option<Value>,) = from_args(args)?;
            let chars = optional_str(chars, method)?;
            let matches = |c: char| match &chars {
                Some(set) => set.contains(c),
                None => is_space(c),
            };
            Ok(Value::from(match method {
                "strip" => s.trim_matches(matches),
                "lstrip" => s.trim_start_matches(matches),
                _ => s.trim_end_matches(matches),
            }))
        }
        "split" | "rsplit" => {
            let (sep, maxsplit, kwargs): (Option<Value>, Option<i64>, Kwargs) = from_args(args)?;
            let sep = match sep {
                Some(sep) => Some(sep),
                None => kwargs.get::<Option<Value>>("sep")?,
            };
            let maxsplit = match maxsplit {
                Some(n) => Some(n),
                None => kwargs.get::<Option<i64>>("maxsplit")?,
            };
            kwargs.assert_all_used()?;
            let sep = optional_str(sep, method)?;
            let limit = maxsplit.and_then(|n| usize::try_from(n).ok());
            let parts = split(s, sep.as_deref(), limit, method == "rsplit")?;
            Ok(Value::from(parts))
        }
        "lower" | "upper" => {
            let () = from_args(args)?;
            Ok(Value::from(if method == "lower" {
                s.to_lowercase()
            } else {
                s.to_uppercase()
            }))
        }
        "replace" => {
            let (old, new, count): (String, String, Option<i64>) = from_args(args)?;
            Ok(Value::from(
                match count.and_then(|n| usize::try_from(n).ok()) {
                    Some(n) => s.replacen(&old, &new, n),
                    None => s.replace(&old, &new),
                },
            ))
        }
        "find" | "rfind" | "count" => {
            let (sub,): (String,) = from_args(args)?;
            let chars_before = |byte: usize| s[..byte].chars().count() as i64;
            Ok(Value::from(match method {
                "find" => s.find(&sub).map_or(-1, chars_before),
                "rfind" => s.rfind(&sub).map_or(-1, chars_before),
                // Python counts an empty needle once per gap between characters.
                _ if sub.is_empty() => s.chars().count() as i64 + 1,
                _ => s.matches(&sub).count() as i64,
            }))
        }
        "join" => {
            let (items,): (Value,) = from_args(args)?;
            let mut parts = Vec::new();
            for (i, item) in items.try_iter()?.enumerate() {
                match item.as_str() {
                    Some(text) => parts.push(text.to_owned()),
                    None => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            format!(
                                "sequence item {i}: expected str instance, {} found",
                                item.kind()
                            ),
                        ))
                    }
                }
            }
            Ok(Value::from(parts.join(s)))
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn map_method(map: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match method {
        "items" => {
            let () = from_args(args)?;
            let mut pairs = Vec::new();
            for key in map.try_iter()? {
                let value = map.get_item(&key)?;
                pairs.push(Value::from(vec![key, value]));
            }
            Ok(Value::from(pairs))
        }
        "keys" => {
            let () = from_args(args)?;
            Ok(Value::from(map.try_iter()?.collect::<Vec<_>>()))
        }
        "values" => {
            let () = from_args(args)?;
            let mut values = Vec::new();
            for key in map.try_iter()? {
                values.push(map.get_item(&key)?);
            }
            Ok(Value::from(values))
        }
        "get" => {
            let (key, default): (Value, Option<Value>) = from_args(args)?;
            let found = map.get_item(&key)?;
            Ok(if found.is_undefined() {
                default.unwrap_or(Value::from(()))
            } else {
                found
            })
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

/// `str.split`/`str.rsplit`: with a separator, exact splitting; without one, runs of
/// whitespace separate and empty pieces at the ends are dropped.
fn split(
    s: &str,
    sep: Option<&str>,
    limit: Option<usize>,
    from_right: bool,
) -> Result<Vec<String>, Error> {
    match sep {
        Some("") => Err(Error::new(ErrorKind::InvalidOperation, "empty separator")),
        Some(sep) => Ok(match (limit, from_right) {
            (None, _) => s.split(sep).map(str::to_owned).collect(),
            (Some(n), false) => s.splitn(n + 1, sep).map(str::to_owned).collect(),
            (Some(n), true) => {
                let mut parts: Vec<String> = s.rsplitn(n + 1, sep).map(str::to_owned).collect();
                parts.reverse();
                parts
            }
        }),
        None if from_right => {
            let mut parts = Vec::new();
            let mut rest = s.trim_end_matches(is_space);
            while !rest.is_empty() {
                if limit == Some(parts.len()) {
                    parts.push(rest.to_owned());
                    break;
                }
                let start = rest.rfind(is_space).map_or(0, |i| i + char_len_at(rest, i));
                parts.push(rest[start..].to_owned());
                rest = rest[..start].trim_end_matches(is_space);
            }
            parts.reverse();
            Ok(parts)
        }
        None => {
            let mut parts = Vec::new();
            let mut rest = s.trim_start_matches(is_space);
            while !rest.is_empty() {
                if limit == Some(parts.len()) {
                    parts.push(rest.to_owned());
                    break;
                }
                let end = rest.find(is_space).unwrap_or(rest.len());
                parts.push(rest[..end].to_owned());
                rest = rest[end..].trim_start_matches(is_space);
            }
            Ok(parts)
        }
    }
}

fn char_len_at(s: &str, byte: usize) -> usize {
    s[byte..].chars().next().map_or(1, char::len_utf8)
}

/// `startswith`/`endswith` take one string or a tuple of them.
fn string_or_strings(value: &Value, method: &str) -> Result<Vec<String>, Error> {
    if let Some(s) = value.as_str() {
        return Ok(vec![s.to_owned()]);
    }
    if value.kind() == ValueKind::Seq {
        let mut out = Vec::new();
        for item in value.try_iter()? {
            match item.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => return Err(type_error(method, &item)),
            }
        }
        return Ok(out);
    }
    Err(type_error(method, value))
}

fn optional_str(value: Option<Value>, method: &str) -> Result<Option<String>, Error> {
    match value {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) => match v.as_str() {
            Some(s) => Ok(Some(s.to_owned())),
            None => Err(type_error(method, &v)),
        },
    }
}

fn type_error(method: &str, got: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "str.{method}() expected a string argument, got {} ({})",
            got.kind(),
            to_str(got)
        ),
    )
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;

    fn render(template: &str) -> String {
        let mut env = Environment::new();
        env.set_unknown_method_callback(super::call_method);
        env.render_str(
            template,
            minijinja::context! { d => serde_json::json!({"b": 1, "a": 2}) },
        )
        .unwrap_or_else(|e| panic!("{template}: {e}"))
    }

    #[test]
    fn string_methods_follow_python() {
        let cases = [
            ("{{ 'ab<think>cd'.split('<think>')[-1] }}", "cd"),
            ("{{ 'abc'.split('<think>')[-1] }}", "abc"),
            ("{{ '  a b\u{1f}c  '.split()|join('|') }}", "a|b|c"),
            ("{{ ' a b  c '.split(none, 1)|join('|') }}", "a|b  c "),
            ("{{ ' a b  c '.rsplit(none, 1)|join('|') }}", " a b|c"),
            ("{{ 'a,b,c'.split(',', 1)|join('|') }}", "a|b,c"),
            ("{{ 'a,b,c'.rsplit(',', 1)|join('|') }}", "a,b|c"),
            (
                "{{ 'a,b,c'.split(sep=',', maxsplit=-1)|join('|') }}",
                "a|b|c",
            ),
            ("{{ ''.split()|length }}", "0"),
            ("{{ ''.split(',')|length }}", "1"),
            ("[{{ '\n\nx\n'.lstrip('\n') }}]", "[x\n]"),
            ("[{{ '\n\nx\n \n'.rstrip('\n') }}]", "[\n\nx\n ]"),
            ("[{{ '\u{1c} x \t'.strip() }}]", "[x]"),
            ("[{{ 'xxaxx'.strip('x') }}]", "[a]"),
            (
                "{{ '<tool_response>x'.startswith('<tool_response>') }}",
                "True",
            ),
            ("{{ 'abc'.startswith(('x', 'a')) }}", "True"),
            ("{{ 'abc'.endswith('b') }}", "False"),
            ("{{ 'aXa'.replace('a', 'b', 1) }}", "bXa"),
            (
                "{{ 'éab'.find('a') }} {{ 'ab'.find('z') }} {{ 'aaa'.count('a') }}",
                "1 -1 3",
            ),
            ("{{ '-'.join(['a', 'b']) }}", "a-b"),
            ("{{ 'aB'.upper() }}{{ 'aB'.lower() }}", "ABab"),
        ];
        for (template, want) in cases {
            assert_eq!(render(template), want, "{template}");
        }
    }

    #[test]
    fn dict_methods_keep_order() {
        assert_eq!(
            render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}"),
            "b=1;a=2;"
        );
        assert_eq!(render("{{ d.keys()|join(',') }}"), "b,a");
        assert_eq!(render("{{ d.values()|join(',') }}"), "1,2");
        assert_eq!(
            render("{{ d.get('a') }} {{ d.get('z', 9) }} {{ d.get('z') is none }}"),
            "2 9 True"
        );
    }

    #[test]
    fn misuse_is_an_error() {
        let mut env = Environment::new();
        env.set_unknown_method_callback(super::call_method);
        for template in [
            "{{ 'a'.split('') }}",
            "{{ 'a'.startswith(1) }}",
            "{{ 'a'.nosuchmethod() }}",
            "{{ '-'.join([1]) }}",
        ] {
            assert!(env.render_str(template, ()).is_err(), "{template}");
        }
    }
}
