//! The 31 rendering cases and 9 error cases of `reference/chat_template_cases.json`, produced
//! by transformers' `apply_chat_template`; rendering must match byte for byte.

mod common;

use mlx_node_chat::{normalize_messages, MessageError, RenderOptions, TemplateError};
use serde_json::{json, Value};

#[test]
fn every_case_renders_byte_for_byte() {
    let Some(fx) = common::load() else { return };
    assert_eq!(fx.cases.len(), 31, "the fixture file should hold 31 cases");
    let mut failures = Vec::new();
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let want = case["text"].as_str().unwrap();
        match fx.template.render(
            common::messages(case),
            common::tools(case),
            &common::options(&case["kwargs"]),
        ) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("{name}:\n{}", common::diff(want, &got))),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        fx.cases.len(),
        failures.join("\n")
    );
}

/// Normalizing already well-formed messages must not change what the template makes of them.
#[test]
fn every_case_renders_the_same_after_normalization() {
    let Some(fx) = common::load() else { return };
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let messages =
            normalize_messages(common::messages(case)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = fx
            .template
            .render(
                &messages,
                common::tools(case),
                &common::options(&case["kwargs"]),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = case["text"].as_str().unwrap();
        assert!(got == want, "{name}:\n{}", common::diff(want, &got));
    }
}

#[test]
fn template_errors_carry_the_templates_message() {
    let Some(fx) = common::load() else { return };
    assert_eq!(
        fx.errors.len(),
        9,
        "the fixture file should hold 9 error cases"
    );
    let mut checked = 0;
    for case in &fx.errors {
        let name = case["name"].as_str().unwrap();
        // transformers refuses an empty list before the template runs; the template's own
        // message is recorded separately.
        let want = case
            .get("template_error")
            .and_then(Value::as_str)
            .unwrap_or_else(|| case["error"].as_str().unwrap());
        if case["error_type"] != "TemplateError" && case.get("template_error").is_none() {
            continue;
        }
        let result = fx.template.render(
            common::messages(case),
            common::tools(case),
            &common::options(&case["kwargs"]),
        );
        match result {
            Err(TemplateError::Raised(message)) => assert_eq!(message, want, "{name}"),
            other => panic!("{name}: expected the template to raise {want:?}, got {other:?}"),
        }
        checked += 1;
    }
    assert_eq!(
        checked, 8,
        "7 template errors plus the template's own empty-list message"
    );
}

#[test]
fn our_checks_refuse_what_they_can_name_better() {
    let Some(fx) = common::load() else { return };
    let case = |name: &str| {
        fx.errors
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no error case {name}"))
    };
    assert_eq!(
        normalize_messages(common::messages(case("error_no_messages"))),
        Err(MessageError::Empty)
    );
    let refused = [
        ("error_unknown_role", 1, "unknown role \"developer\""),
        (
            "error_unexpected_content_item",
            0,
            "unsupported type \"audio\"",
        ),
        (
            "error_content_is_a_mapping",
            0,
            "\"content\" must be a string",
        ),
    ];
    for (name, want_index, want_reason) in refused {
        match normalize_messages(common::messages(case(name))) {
            Err(MessageError::Invalid { index, reason }) => {
                assert_eq!(index, want_index, "{name}");
                assert!(reason.contains(want_reason), "{name}: {reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // The rest are the template's rules; normalization passes them on and the template raises.
    for name in [
        "error_only_system",
        "error_only_tool_response_user",
        "error_system_not_first",
        "error_image_in_system",
    ] {
        let c = case(name);
        let messages = normalize_messages(common::messages(c)).unwrap();
        match fx
            .template
            .render(&messages, None, &common::options(&c["kwargs"]))
        {
            Err(TemplateError::Raised(message)) => assert_eq!(message, c["error"], "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn json_string_arguments_are_parsed_before_rendering() {
    let Some(fx) = common::load() else { return };
    let case = fx
        .errors
        .iter()
        .find(|c| c["name"] == "error_tool_call_arguments_as_json_string")
        .unwrap();
    let options = common::options(&case["kwargs"]);
    let raw = common::messages(case);

    // Raw, the template fails inside jinja exactly as transformers did.
    match fx.template.render(raw, common::tools(case), &options) {
        Err(TemplateError::Render(message)) => {
            assert!(
                message.contains(case["error"].as_str().unwrap()),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }

    // Normalized, it renders like the same conversation written with dict arguments.
    let normalized = normalize_messages(raw).unwrap();
    let got = fx
        .template
        .render(&normalized, common::tools(case), &options)
        .unwrap();
    let mut with_dict = raw.to_vec();
    with_dict[1]["tool_calls"][0]["function"]["arguments"] = json!({"city": "Oslo"});
    let want = fx
        .template
        .render(&with_dict, common::tools(case), &options)
        .unwrap();
    assert!(got == want, "{}", common::diff(&want, &got));
    assert!(got.contains("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call><|im_end|>"));

    // The fixture named for the parsed form is a different conversation; it must still be
    // reproduced from a JSON-string spelling of its arguments.
    let nested = fx
        .cases
        .iter()
        .find(|c| c["name"] == "tool_call_arguments_dict_nested_values")
        .unwrap();
    let mut as_strings = common::messages(nested).to_vec();
    for message in &mut as_strings {
        if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for call in calls {
                let arguments = &mut call["function"]["arguments"];
                *arguments = Value::String(serde_json::to_string(arguments).unwrap());
            }
        }
    }
    let got = fx
        .template
        .render(
            &normalize_messages(&as_strings).unwrap(),
            common::tools(nested),
            &common::options(&nested["kwargs"]),
        )
        .unwrap();
    let want = nested["text"].as_str().unwrap();
    assert!(got == want, "{}", common::diff(want, &got));

    // A string that is not JSON is refused, naming the message and the call.
    let mut broken = raw.to_vec();
    broken[1]["tool_calls"][0]["function"]["arguments"] = json!("{city: Oslo}");
    match normalize_messages(&broken) {
        Err(MessageError::ToolCall {
            index: 1,
            call: 0,
            reason,
        }) => {
            assert!(
                reason.contains("not valid JSON") && reason.contains("{city: Oslo}"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn thinking_off_and_on_differ_only_in_the_generation_prompt() {
    let Some(fx) = common::load() else { return };
    let messages = [json!({"role": "user", "content": "Hi"})];
    let render = |enable_thinking| {
        let options = RenderOptions {
            add_generation_prompt: true,
            enable_thinking,
            ..RenderOptions::default()
        };
        fx.template.render(&messages, None, &options).unwrap()
    };
    assert!(render(None).ends_with("<|im_start|>assistant\n<think>\n"));
    assert_eq!(render(None), render(Some(true)));
    assert!(render(Some(false)).ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
}
