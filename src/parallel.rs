//! Work spread over the cores with scoped threads: one contiguous chunk of items per core,
//! each worker with its own state (a preprocessor, a buffer), results in item order.

use anyhow::Result;

pub fn map<T: Sync, S, R: Send>(
    items: &[T],
    state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    let chunk = items.len().div_ceil(workers).max(1);
    let parts = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let (state, work) = (&state, &work);
                scope.spawn(move || -> Result<Vec<R>> {
                    let mut own = state();
                    part.iter().map(|item| work(&mut own, item)).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(parts.into_iter().flatten().collect())
}
