//! The cores ucad works on (`[runtime] threads`, `--threads`): one rayon pool, on which one
//! backbone pass spreads its matrix products (tract's multithread executor) and batch work
//! spreads items, one contiguous chunk per core, each worker with its own state, results in item
//! order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use rayon::ThreadPool;
use tract_linalg::multithread::{multithread_tract_scope, set_default_executor, Executor};

use crate::alloc::on_the_heap;

/// The most threads a config or flag may ask for: more is a typo.
pub(crate) const MAX_THREADS: usize = 256;

/// The threads in use; 0 until [`use_threads`] is called (all cores, passes on one thread).
static THREADS: AtomicUsize = AtomicUsize::new(0);
/// The pool of [`use_threads`] (none for one thread, or before it is called); the executor
/// tract uses holds the same pool.
static WORKERS: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);

/// The cores this machine offers.
pub(crate) fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `requested` threads, 0 meaning all cores; more than [`MAX_THREADS`] is refused.
pub fn resolve(requested: usize) -> Result<usize> {
    ensure!(
        requested <= MAX_THREADS,
        "{requested} threads asked for: at most {MAX_THREADS} (0 = all cores)"
    );
    Ok(if requested == 0 { all_cores() } else { requested })
}

/// Backbone passes from now on spread over `requested` threads (0 = all cores), and so does
/// batch work. The pool's threads take their allocations from the frame pool (when one is
/// reserved), as the judging thread does, so a frame judged on several cores still takes nothing
/// from the heap.
pub fn use_threads(requested: usize) -> Result<usize> {
    let threads = resolve(requested)?;
    let mut pool = lock_workers();
    if THREADS.load(Ordering::Acquire) != threads {
        *pool = worker_pool(threads)?;
        set_default_executor(executor_on(pool.clone()));
        THREADS.store(threads, Ordering::Release);
    }
    Ok(threads)
}

/// An executor of `threads` threads (one: the calling thread alone).
pub fn executor(threads: usize) -> Result<Executor> {
    Ok(executor_on(worker_pool(threads)?))
}

fn executor_on(pool: Option<Arc<ThreadPool>>) -> Executor {
    pool.map_or(Executor::SingleThread, Executor::MultiThread)
}

/// A pool of `threads` threads; none for one thread (the calling thread does the work).
fn worker_pool(threads: usize) -> Result<Option<Arc<ThreadPool>>> {
    if threads <= 1 {
        return Ok(None);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("ucad-worker-{i}"))
        .start_handler(|_| crate::alloc::serve_this_thread_from_frame_pool())
        .build()
        .with_context(|| format!("cannot start {threads} worker threads"))?;
    Ok(Some(Arc::new(pool)))
}

fn lock_workers() -> std::sync::MutexGuard<'static, Option<Arc<ThreadPool>>> {
    WORKERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `work` on the pool of [`use_threads`] (rayon's global pool before it is called).
pub(crate) fn install<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let pool = lock_workers().clone();
    match pool {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

/// The threads batch work uses: those of [`use_threads`], else all cores.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Acquire) {
        0 => all_cores(),
        n => n,
    }
}

/// `work` on every item, spread over [`threads`] workers; each worker's backbone passes run on
/// its own thread (the workers already fill the cores).
pub fn map<T: Sync, S, R: Send>(
    items: &[T],
    state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let workers = threads().min(items.len().max(1));
    let chunk = items.len().div_ceil(workers).max(1);
    let run = |part: &[T]| -> Result<Vec<R>> {
        on_the_heap(|| {
            multithread_tract_scope(Executor::SingleThread, || {
                let mut own = state();
                part.iter().map(|item| work(&mut own, item)).collect()
            })
        })
    };
    if workers == 1 {
        return run(items);
    }
    // Collected on the heap, and errors in item order.
    let parts: Vec<Result<Vec<R>>> = install(|| on_the_heap(|| items.par_chunks(chunk).map(run).collect()));
    Ok(parts
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect())
}
