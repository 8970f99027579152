//! The generation loop: stop tokens, limits, the abort flag, seeded sampling, and the
//! conversation cache (a later prompt that extends a snapshot runs only its new tokens and
//! produces exactly what a cold run produces).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use mlx_node_core::generate::{generate, greedy, ConversationCache, Finish, Request, Step};
use mlx_node_core::sampling::SamplingParams;
use mlx_node_core::Qwen35;
use mlx_rs::Dtype;

fn request<'a>(prompt: &'a [u32], max: usize, snapshot_at: &'a [usize]) -> Request<'a> {
    Request {
        prompt,
        max_new_tokens: max,
        sampling: SamplingParams::default(),
        stop_tokens: &[],
        prefill_chunk: 64,
        snapshot_at,
    }
}

fn model() -> Option<(Qwen35, Vec<u32>)> {
    let root = common::fixtures()?;
    let model = Qwen35::load(&root.join("tiny-dense"), Dtype::Float32).unwrap();
    let ids = common::Reference::load(&root, "tiny-dense").ids("d_long.input_ids");
    Some((model, ids))
}

#[test]
fn reuses_the_longest_snapshot_and_matches_a_cold_run() {
    let Some((model, ids)) = model() else { return };
    let never = AtomicBool::new(false);
    let first = &ids[..200];
    let mut conversation = ConversationCache::default();
    let out = generate(
        &model,
        &mut conversation,
        &request(first, 6, &[150, 180]),
        &never,
        |_| Ok(Step::Continue),
    )
    .unwrap();
    assert_eq!(out.cached_tokens, 0);
    assert_eq!(out.tokens, greedy(&model, first, 6, 64).unwrap());

    // Shares 180 tokens with the first prompt, then goes elsewhere.
    let second: Vec<u32> = ids[..180].iter().chain(&ids[300..340]).copied().collect();
    let out = generate(
        &model,
        &mut conversation,
        &request(&second, 6, &[]),
        &never,
        |_| Ok(Step::Continue),
    )
    .unwrap();
    assert_eq!(out.cached_tokens, 180);
    assert_eq!(
        out.tokens,
        greedy(&model, &second, 6, 64).unwrap(),
        "reuse changes nothing"
    );

    // Continues the second call's own output: the live state is reused.
    let mut third = second.clone();
    third.extend(&out.tokens[..5]);
    third.push(ids[400]);
    let out3 = generate(
        &model,
        &mut conversation,
        &request(&third, 4, &[]),
        &never,
        |_| Ok(Step::Continue),
    )
    .unwrap();
    assert_eq!(out3.cached_tokens, second.len() + 5);
    assert_eq!(out3.tokens, greedy(&model, &third, 4, 64).unwrap());

    // A prompt sharing only 150 tokens falls back to that snapshot.
    let fourth: Vec<u32> = ids[..150].iter().chain(&ids[500..520]).copied().collect();
    let out4 = generate(
        &model,
        &mut conversation,
        &request(&fourth, 3, &[]),
        &never,
        |_| Ok(Step::Continue),
    )
    .unwrap();
    assert_eq!(out4.cached_tokens, 150);
    assert_eq!(out4.tokens, greedy(&model, &fourth, 3, 64).unwrap());
}

#[test]
fn stops_on_stop_tokens_limits_callbacks_and_abort() {
    let Some((model, ids)) = model() else { return };
    let prompt = &ids[..40];
    let cold = greedy(&model, prompt, 8, 64).unwrap();
    let never = AtomicBool::new(false);
    let mut conversation = ConversationCache::default();

    let stop = [cold[3]];
    let mut req = request(prompt, 8, &[]);
    req.stop_tokens = &stop;
    let out = generate(&model, &mut conversation, &req, &never, |_| {
        Ok(Step::Continue)
    })
    .unwrap();
    let first_stop = cold.iter().position(|t| *t == cold[3]).unwrap();
    assert_eq!(out.tokens, cold[..=first_stop]);
    assert_eq!(out.finish, Finish::StopToken);

    let out = generate(
        &model,
        &mut conversation,
        &request(prompt, 5, &[]),
        &never,
        |_| Ok(Step::Continue),
    )
    .unwrap();
    assert_eq!((out.tokens.len(), out.finish), (5, Finish::Length));

    let mut seen = 0;
    let out = generate(
        &model,
        &mut conversation,
        &request(prompt, 8, &[]),
        &never,
        |_| {
            seen += 1;
            Ok(if seen == 2 {
                Step::Stop
            } else {
                Step::Continue
            })
        },
    )
    .unwrap();
    assert_eq!((out.tokens.len(), out.finish), (2, Finish::Stopped));

    let abort = AtomicBool::new(false);
    let out = generate(
        &model,
        &mut conversation,
        &request(prompt, 8, &[]),
        &abort,
        |_| {
            abort.store(true, Ordering::Relaxed);
            Ok(Step::Continue)
        },
    )
    .unwrap();
    assert_eq!(
        (out.tokens.len(), out.finish),
        (1, Finish::Abort),
        "abort acts within one step"
    );
}

#[test]
fn the_same_seed_gives_the_same_tokens() {
    let Some((model, ids)) = model() else { return };
    let never = AtomicBool::new(false);
    let run = |seed| {
        let mut req = request(&ids[..30], 12, &[]);
        req.sampling = SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            seed: Some(seed),
            ..Default::default()
        };
        generate(
            &model,
            &mut ConversationCache::default(),
            &req,
            &never,
            |_| Ok(Step::Continue),
        )
        .unwrap()
        .tokens
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}
