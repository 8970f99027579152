//! The machine's memory read bandwidth, for the decode roofline of `npm run bench`: one thread
//! per core sums its slice of a buffer much larger than the caches (1 GiB by default), best of a
//! few passes. Prints one JSON line: {"gbPerSecond", "bytes", "threads", "passes", "passGbPerSecond"}.
//!
//!     cargo run --release -q -p mlx-node-kernels --example bandwidth [-- --mib 1024 --passes 5 --threads N]
//!
//! Plain std threads, no MLX. The buffer is written first by the same threads that read it later
//! (so every page is resident before timing), and each pass reads every byte once with eight
//! independent u64 accumulators, which the compiler vectorizes.

use std::hint::black_box;
use std::thread;
use std::time::Instant;

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v}"))
        })
}

/// Sums a slice with eight independent lanes (no loop-carried dependency between them).
fn sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*w);
        }
    }
    let tail = rest.iter().fold(0u64, |a, w| a.wrapping_add(*w));
    acc.iter().fold(tail, |a, w| a.wrapping_add(*w))
}

fn main() {
    let threads = arg("--threads")
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mib = arg("--mib").unwrap_or(1024).max(64);
    let passes = arg("--passes").unwrap_or(5).max(1);
    let words = mib * (1 << 20) / 8;
    let per = words.div_ceil(threads);

    // One Vec per thread, allocated and filled by that thread (first touch).
    let mut parts: Vec<Vec<u64>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = per.min(words.saturating_sub(t * per));
                s.spawn(move || {
                    (0..n as u64)
                        .map(|i| i ^ ((t as u64) << 32))
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bytes: usize = parts.iter().map(|p| p.len() * 8).sum();

    let mut rates = Vec::with_capacity(passes);
    let mut check = 0u64;
    for _ in 0..passes {
        let started = Instant::now();
        let sums: Vec<u64> = thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|p| s.spawn(move || sum(black_box(p))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let seconds = started.elapsed().as_secs_f64();
        check = sums.iter().fold(check, |a, s| a.wrapping_add(*s));
        rates.push(bytes as f64 / seconds / 1e9);
    }
    black_box(check);
    black_box(&mut parts);
    let best = rates.iter().cloned().fold(0.0, f64::max);
    let list: Vec<String> = rates.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "{{\"gbPerSecond\":{best:.3},\"bytes\":{bytes},\"threads\":{threads},\"passes\":{passes},\"passGbPerSecond\":[{}]}}",
        list.join(",")
    );
}
