//! A queue between the model's thread, which pushes items as it makes them, and JS, which pulls
//! them with `next()` promises. Whichever side comes first waits for the other: a pushed item
//! waits in the queue, a `next()` waits as a pending promise. This is what makes `chatStream`
//! an async iterator without blocking the JS thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::ToNapiValue;
use napi::{Env, JsDeferred};

/// How one pulled item settles its promise on the JS thread.
pub type Settle<T> = Box<dyn FnOnce(Env) -> napi::Result<T> + Send>;

struct State<T: ToNapiValue + 'static> {
    items: VecDeque<Settle<T>>,
    waiting: VecDeque<JsDeferred<T, Settle<T>>>,
}

pub struct Queue<T: ToNapiValue + 'static> {
    state: Mutex<State<T>>,
    /// Set by the consumer to ask the producer to stop (the JS loop was left early).
    pub cancelled: Arc<AtomicBool>,
}

impl<T: ToNapiValue + 'static> Queue<T> {
    pub fn new(cancelled: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                waiting: VecDeque::new(),
            }),
            cancelled,
        })
    }

    /// Producer side: hands an item (or the end, or an error) to the next `next()`.
    pub fn push(&self, settle: Settle<T>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.waiting.pop_front() {
            Some(deferred) => deferred.resolve(settle),
            None => state.items.push_back(settle),
        }
    }

    /// Consumer side: settles `deferred` with the next item, now or when it arrives.
    pub fn pull(&self, deferred: JsDeferred<T, Settle<T>>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.items.pop_front() {
            Some(settle) => deferred.resolve(settle),
            None => state.waiting.push_back(deferred),
        }
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}
