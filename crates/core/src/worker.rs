//! A thread that owns one value (a loaded model) and runs jobs on it in submission order.
//! MLX's arrays and streams stay on that thread, callers never block, and jobs queued on one
//! worker never interleave.

use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

use crate::error::{fail, ErrorCode, Result};

type Job<S> = Box<dyn FnOnce(&mut Option<S>) + Send>;

pub struct Worker<S> {
    sender: Mutex<Option<Sender<Job<S>>>>,
}

impl<S: 'static> Worker<S> {
    /// Starts the thread with no value yet; the first job usually creates it.
    pub fn spawn(name: &str) -> Result<Self> {
        let (sender, receiver) = channel::<Job<S>>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut state: Option<S> = None;
                for job in receiver {
                    // A panicking job must not take the worker (and every later call) down;
                    // the job's own reply channel reports the failure.
                    let _ =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut state)));
                }
            })
            .map_err(|e| {
                crate::Error::new(ErrorCode::Io, format!("cannot start a worker thread: {e}"))
            })?;
        Ok(Worker {
            sender: Mutex::new(Some(sender)),
        })
    }

    /// Queues `job`; fails once the worker has been shut down.
    pub fn submit(&self, job: impl FnOnce(&mut Option<S>) + Send + 'static) -> Result<()> {
        let guard = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(sender) if sender.send(Box::new(job)).is_ok() => Ok(()),
            _ => fail(ErrorCode::Disposed, "the model has been disposed"),
        }
    }

    /// Queues `last` as the final job and closes the queue: jobs already queued run first,
    /// then `last`, then the value is dropped on its own thread and the thread ends. Later
    /// submissions fail with [`ErrorCode::Disposed`]. Never blocks the caller.
    pub fn close(&self, last: impl FnOnce(&mut Option<S>) + Send + 'static) -> Result<()> {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(sender) = sender else {
            return fail(ErrorCode::Disposed, "the model has been disposed");
        };
        let job = move |state: &mut Option<S>| {
            last(state);
            *state = None;
        };
        sender
            .send(Box::new(job))
            .or_else(|_| fail(ErrorCode::Disposed, "the model's worker has stopped"))
    }

    pub fn is_closed(&self) -> bool {
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        // Dropping the sender ends the thread's loop; it finishes queued jobs on its own.
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn runs_jobs_in_order_on_one_thread_and_refuses_after_shutdown() {
        let worker = Worker::<Vec<u32>>::spawn("test-worker").unwrap();
        let (tx, rx) = channel();
        worker.submit(|s| *s = Some(Vec::new())).unwrap();
        for i in 0..5 {
            let tx = tx.clone();
            worker
                .submit(move |s| {
                    let v = s.as_mut().unwrap();
                    v.push(i);
                    tx.send((v.clone(), std::thread::current().name().map(String::from)))
                        .unwrap();
                })
                .unwrap();
        }
        let replies: Vec<_> = (0..5).map(|_| rx.recv().unwrap()).collect();
        let last = replies[4].clone();
        assert_eq!(last.0, [0, 1, 2, 3, 4]);
        assert_eq!(last.1.as_deref(), Some("test-worker"));
        worker.submit(|_| panic!("a failing job")).unwrap();
        let tx2 = tx.clone();
        worker
            .submit(move |s| tx2.send((s.clone().unwrap(), None)).unwrap())
            .unwrap();
        assert_eq!(
            rx.recv().unwrap().0.len(),
            5,
            "the worker survives a panicking job"
        );
        let tx3 = tx.clone();
        worker
            .close(move |s| tx3.send((s.take().unwrap(), None)).unwrap())
            .unwrap();
        assert_eq!(
            rx.recv().unwrap().0.len(),
            5,
            "close runs after the queued jobs"
        );
        assert!(worker.is_closed());
        assert_eq!(worker.submit(|_| {}).unwrap_err().code, ErrorCode::Disposed);
    }
}
