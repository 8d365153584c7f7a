//! The process's global allocator: it counts heap allocations, and serves the inspection hot
//! path from a fixed frame pool reserved at start-up, so that steady-state frames take nothing
//! from the system heap. Install it with
//! `#[global_allocator] static A: CountingAllocator = CountingAllocator;`.
//!
//! Why a pool: tract's CPU plan allocates every operator's output anew on each run (≈ 3.9k
//! allocations per frame for the default backbone), and it offers no way to run into buffers
//! planned ahead. Allocations made on a thread inside [`in_frame_pool`] are therefore served by a
//! TLSF allocator (`rlsf`: constant-time allocate and free, made for real-time systems) over
//! memory reserved and touched once by [`reserve_frame_pool`], and so are those of the backbone's
//! worker threads (see parallel.rs). Everything else — start-up, learning, other threads —
//! uses the system allocator and is counted as a heap allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{ensure, Result};
use rlsf::Tlsf;

/// Largest block: 32 << 26 bytes (2 GiB) on 64-bit targets.
type Pool = Tlsf<'static, u32, u32, 26, 32>;

static POOL: Mutex<Pool> = Mutex::new(Tlsf::new());
static POOL_START: AtomicUsize = AtomicUsize::new(0);
static POOL_END: AtomicUsize = AtomicUsize::new(0);
static POOL_IN_USE: AtomicUsize = AtomicUsize::new(0);
static POOL_PEAK: AtomicUsize = AtomicUsize::new(0);
static POOL_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static HEAP_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static HEAP_IN_USE: AtomicUsize = AtomicUsize::new(0);
/// Set by the first allocation through [`CountingAllocator`]: it is the global allocator.
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static USE_FRAME_POOL: Cell<bool> = const { Cell::new(false) };
}

pub struct CountingAllocator;

fn pool_serves_this_thread() -> bool {
    USE_FRAME_POOL.try_with(Cell::get).unwrap_or(false)
}

fn pool() -> MutexGuard<'static, Pool> {
    // Nothing panics while the lock is held; a poisoned lock still guards a consistent pool.
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// END is published (Release) after START, and read (Acquire) before it: a thread that sees a
/// pool's end also sees its start.
fn pool_range() -> (usize, usize) {
    let end = POOL_END.load(Ordering::Acquire);
    (POOL_START.load(Ordering::Relaxed), end)
}

fn in_pool(ptr: *mut u8) -> bool {
    let (start, end) = pool_range();
    (start..end).contains(&(ptr as usize))
}

fn pool_alloc(layout: Layout) -> Option<*mut u8> {
    if POOL_END.load(Ordering::Acquire) == 0 {
        return None;
    }
    let ptr = pool().allocate(layout)?;
    POOL_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let in_use = POOL_IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
    POOL_PEAK.fetch_max(in_use, Ordering::Relaxed);
    Some(ptr.as_ptr())
}

/// # Safety
/// `ptr` was allocated from the pool with `layout`.
unsafe fn pool_dealloc(ptr: *mut u8, layout: Layout) {
    POOL_IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    // SAFETY: the caller guarantees `ptr` came from the pool with this layout.
    unsafe { pool().deallocate(NonNull::new_unchecked(ptr), layout.align()) }
}

fn heap_alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    HEAP_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    INSTALLED.store(true, Ordering::Relaxed);
    // SAFETY: GlobalAlloc's contract (non-zero size) is passed through from our caller.
    let ptr = unsafe {
        if zeroed {
            System.alloc_zeroed(layout)
        } else {
            System.alloc(layout)
        }
    };
    if !ptr.is_null() {
        HEAP_IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
    }
    ptr
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match pool_serves_this_thread().then(|| pool_alloc(layout)).flatten() {
            Some(ptr) => ptr,
            None => heap_alloc(layout, false),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match pool_serves_this_thread().then(|| pool_alloc(layout)).flatten() {
            Some(ptr) => {
                // SAFETY: the pool just handed out `layout.size()` writable bytes at `ptr`.
                unsafe { ptr.write_bytes(0, layout.size()) };
                ptr
            }
            None => heap_alloc(layout, true),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_pool(ptr) {
            // SAFETY: only the pool hands out addresses inside its range.
            unsafe { pool_dealloc(ptr, layout) }
        } else {
            HEAP_IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            // SAFETY: not a pool address, so the system allocator gave it out.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (whole body): GlobalAlloc's contract for `ptr`, `layout` and `new_size`.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            if in_pool(ptr) {
                let grown = pool().reallocate(NonNull::new_unchecked(ptr), new_layout);
                if let Some(grown) = grown {
                    POOL_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
                    POOL_IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
                    let in_use = POOL_IN_USE.fetch_add(new_size, Ordering::Relaxed) + new_size;
                    POOL_PEAK.fetch_max(in_use, Ordering::Relaxed);
                    return grown.as_ptr();
                }
                return move_block(self, ptr, layout, new_layout);
            }
            if pool_serves_this_thread() && POOL_END.load(Ordering::Acquire) != 0 {
                return move_block(self, ptr, layout, new_layout);
            }
            HEAP_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            let moved = System.realloc(ptr, layout, new_size);
            if !moved.is_null() {
                HEAP_IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
                HEAP_IN_USE.fetch_add(new_size, Ordering::Relaxed);
            }
            moved
        }
    }
}

/// realloc by allocate, copy, free (between pool and heap, or within a full pool).
///
/// # Safety
/// `ptr` is live with `layout`; `new_layout` has a non-zero size.
unsafe fn move_block(alloc: &CountingAllocator, ptr: *mut u8, layout: Layout, new_layout: Layout) -> *mut u8 {
    // SAFETY: the caller's guarantees; the copy covers bytes valid in both blocks.
    unsafe {
        let new = alloc.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_layout.size()));
            alloc.dealloc(ptr, layout);
        }
        new
    }
}

/// Reserves the frame pool: `bytes` taken from the system once and touched, so that they are
/// resident before the first frame. Later calls may only ask for no more than the first.
pub(crate) fn reserve_frame_pool(bytes: usize) -> Result<()> {
    ensure!(
        bytes >= 1 << 20,
        "the frame pool needs at least 1 MiB (asked for {bytes} bytes)"
    );
    // The pool's lock also serialises reservations.
    let mut pool = pool();
    let (start, end) = pool_range();
    if end != 0 {
        let reserved = end - start;
        ensure!(
            bytes <= reserved,
            "the frame pool is already reserved with {reserved} bytes; {bytes} asked"
        );
        return Ok(());
    }
    let layout = Layout::from_size_align(bytes, 4096)?;
    // SAFETY: non-zero size; the block is leaked to the pool for the life of the process.
    let block = unsafe { System.alloc_zeroed(layout) };
    ensure!(!block.is_null(), "cannot reserve a frame pool of {bytes} bytes");
    // Touch every page so that the pool is resident now, not on a frame's first use of it.
    for page in (0..bytes).step_by(4096) {
        // SAFETY: `page` lies inside the block just allocated.
        unsafe { block.add(page).write_volatile(0) };
    }
    let start = block as usize;
    let block = NonNull::slice_from_raw_parts(NonNull::new(block).expect("checked non-null"), bytes);
    // SAFETY: the block is never freed, so it outlives the pool.
    unsafe { pool.insert_free_block_ptr(block) };
    POOL_START.store(start, Ordering::Relaxed);
    POOL_END.store(start + bytes, Ordering::Release);
    Ok(())
}

/// Runs `work` with this thread's allocations served from the frame pool (when one is
/// reserved; the heap otherwise).
pub(crate) fn in_frame_pool<R>(work: impl FnOnce() -> R) -> R {
    served_from_frame_pool(true, work)
}

/// Runs `work` with this thread's allocations served from the heap: batch work on the worker
/// threads (parallel.rs), which otherwise compute parts of frames.
pub(crate) fn on_the_heap<R>(work: impl FnOnce() -> R) -> R {
    served_from_frame_pool(false, work)
}

fn served_from_frame_pool<R>(serve: bool, work: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            USE_FRAME_POOL.with(|flag| flag.set(self.0));
        }
    }
    let _restore = Restore(USE_FRAME_POOL.with(|flag| flag.replace(serve)));
    work()
}

/// Serves every later allocation of this thread from the frame pool (when one is reserved): for
/// the worker threads, which compute parts of frames (batch work opts out with [`on_the_heap`]).
pub(crate) fn serve_this_thread_from_frame_pool() {
    USE_FRAME_POOL.with(|flag| flag.set(true));
}

/// Makes the panic hook run on the system heap: a panic while a frame is judged (a fault the loop
/// survives) must not leave what the hook keeps — a backtrace's symbol cache, say — in the frame
/// pool, where it would crowd out the frames that follow. Wraps the current hook, once.
pub(crate) fn report_panics_from_the_heap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let pooled = USE_FRAME_POOL.with(|flag| flag.replace(false));
            hook(info);
            USE_FRAME_POOL.with(|flag| flag.set(pooled));
        }));
    });
}

/// Allocation counts so far in this process (all threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationCounts {
    /// Taken from the system heap.
    pub heap: u64,
    /// Served by the frame pool.
    pub pool: u64,
    /// Bytes taken from the system heap and not given back.
    pub heap_bytes_in_use: usize,
}

/// The counts so far; `None` when the counting allocator is not the global allocator.
pub fn allocation_counts() -> Option<AllocationCounts> {
    INSTALLED.load(Ordering::Relaxed).then(|| AllocationCounts {
        heap: HEAP_ALLOCATIONS.load(Ordering::Relaxed),
        pool: POOL_ALLOCATIONS.load(Ordering::Relaxed),
        heap_bytes_in_use: HEAP_IN_USE.load(Ordering::Relaxed),
    })
}

/// Frame pool size and the most of it ever in use, in bytes (0, 0 without a pool).
pub fn frame_pool_bytes() -> (usize, usize) {
    let (start, end) = pool_range();
    (end - start, POOL_PEAK.load(Ordering::Relaxed))
}

/// Peak resident set size (VmHWM) of this process, where /proc says it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
