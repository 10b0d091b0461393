//! The process's allocator, mimalloc, and the settings it runs with.
//!
//! mimalloc rather than the system's for speed: a 10M drain took 43.6 s
//! with glibc's allocator against 30.6 s beside it. glibc's held less
//! memory than mimalloc at its defaults, which the settings below change.
//!
//! Every epoch allocates its batches and frees them again, and every
//! checkpoint its encoded state. mimalloc keeps memory left free for a
//! while before giving it back (its purge delay), so that the next epoch
//! finds the pages the last one left instead of faulting them in again,
//! zeroed. The delay is half a second, an epoch or two of a drain, and
//! arenas wait as long as pages (by default ten times as long). At ten
//! seconds (a hundred for arenas) and with the huge pages below, a live
//! run catching up with a backlog over 1.25 million resources peaked at
//! 1,262 to 1,344 MiB; two seconds after a checkpoint it held 1,075 to
//! 1,185 MiB where glibc's allocator, doing the same work 40% slower, held
//! 780: memory freed and not yet given back. At two seconds, a live run's
//! epoch: peaks of 1,159 to 1,200 MiB and drains as fast on the wall clock;
//! with no delay at all, 755 MiB at the kill, but a drain a fifth slower,
//! faulting pages in again. On a machine twice as fast, two seconds held
//! the memory of several epochs of a catch-up, which peaked at 1,197 to
//! 1,266 MiB in four runs against 1,159 to 1,194 at half a second,
//! alternated; 10M drains took 16.9 s on average against 16.7 over six
//! pairs, with 0.45 s more system time (BENCHMARKS.md).
//!
//! mimalloc backs its arenas with transparent huge pages where the system
//! allows (`madvise`), and a 2 MiB page stays resident while a single
//! block in it is allocated. tally runs without them: mimalloc's own
//! option comes too late for its first arena, reserved before `main`, so
//! the process turns them off (`PR_SET_THP_DISABLE`). Off or on, with the
//! delays above, the catch-up peaked at 1,178 or 1,222 MiB (one run each).
//!
//! mimalloc serves Rust's allocations only: librdkafka allocates its fetch
//! buffers and messages with glibc's malloc, and the workers free the
//! messages, into the arenas of librdkafka's threads. glibc gives an arena's
//! free memory back only from its top, so a live run that had caught up with
//! a backlog kept 240 MiB of it resident, free and never used again, while
//! its whole state took 11 MB. A thread of its own asks glibc to give it
//! back (`malloc_trim`) every ten seconds.
//!
//! The allocator, its settings and the trim are calls into the C libraries,
//! hence this module's `unsafe` blocks; the library crates forbid `unsafe`
//! outright.

#![expect(unsafe_code, reason = "mimalloc's allocator and options and glibc's trim are C interfaces only")]

use std::ffi::{c_int, c_long, c_void};
use std::time::Duration;

/// mimalloc, asked for alignment only where its size classes do not give
/// it anyway.
///
/// The `mimalloc` crate asks `mi_malloc_aligned` for every block. mimalloc 3
/// serves that from a size class's free list only if the class has a page
/// with a free block; otherwise a class that is not a power of two (48, 80,
/// 96 bytes…) is passed over for the next one up, with room to align: a
/// 48-byte block took 64 bytes, and since the class's pages are only ever
/// made by plain allocations, it took 64 every time. Every class is 8 or 16
/// bytes or a multiple of 16, and pages start 16-aligned: a size that is a
/// multiple of an alignment of at most 16 is aligned by its class, and
/// asked for with plain `mi_malloc`.
pub struct Mimalloc;

/// The largest alignment mimalloc's size classes give (`MI_MAX_ALIGN_SIZE`).
const CLASS_ALIGNMENT: usize = 16;

/// Whether `size` is a multiple of `align`, a layout's alignment and so a
/// power of two: masked, where `is_multiple_of` divides, on every allocation.
fn aligned_by_class(size: usize, align: usize) -> bool {
    align <= CLASS_ALIGNMENT && size & (align - 1) == 0
}

/// A new block of `layout` from `plain` where its size class aligns it,
/// else from `aligned`.
///
/// # Safety
///
/// `plain` and `aligned` are mimalloc's calls for one kind of block (left
/// as it is, or zeroed), without and with an alignment.
#[inline(always)]
unsafe fn allocate(
    layout: std::alloc::Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: mimalloc's allocation calls have no precondition.
    unsafe {
        if aligned_by_class(layout.size(), layout.align()) {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: every block comes from mimalloc, aligned as its layout asks (by
// its size class where `aligned_by_class`, else by the aligned calls), and
// `mi_free` takes any block mimalloc gave, aligned or not.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: mimalloc's two calls for a block left as it is.
        unsafe { allocate(layout, libmimalloc_sys::mi_malloc, libmimalloc_sys::mi_malloc_aligned) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: mimalloc's two calls for a zeroed block.
        unsafe { allocate(layout, libmimalloc_sys::mi_zalloc, libmimalloc_sys::mi_zalloc_aligned) }
    }

    unsafe fn dealloc(&self, block: *mut u8, _: std::alloc::Layout) {
        // SAFETY: the caller passes a block this allocator gave.
        unsafe { libmimalloc_sys::mi_free(block.cast()) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a block this allocator gave; a block
        // kept in place keeps its address and so its alignment.
        unsafe {
            if aligned_by_class(new_size, layout.align()) {
                libmimalloc_sys::mi_realloc(block.cast(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(block.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// mimalloc 3's options this module sets, by their places in its
/// `mi_option_t`, which the bindings do not name (they list mimalloc 2's).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;

/// Milliseconds memory stays free before it is given back.
const PURGE_DELAY_MS: c_long = 500;

/// How often glibc is asked to give its free memory back.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

unsafe extern "C" {
    /// glibc's: gives the free memory of every arena back to the system,
    /// keeping `pad` bytes at the top of the main one.
    fn malloc_trim(pad: usize) -> c_int;
    /// Linux's process control call.
    fn prctl(option: c_int, ...) -> c_int;
}

/// `prctl` option: no transparent huge pages for this process's memory,
/// whatever an `madvise` asks.
const PR_SET_THP_DISABLE: c_int = 41;

/// Sets mimalloc's purge delays and turns transparent huge pages off;
/// called first thing, before any thread starts.
pub fn configure() {
    // SAFETY: writes two options of mimalloc's table, read when it gives
    // memory back; no other thread runs yet.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
        // Arenas wait the same, not ten times as long.
        libmimalloc_sys::mi_option_set(ARENA_PURGE_MULT, 1);
    }
    // SAFETY: sets a flag of the process's memory map; no pointer passed.
    // A kernel without the call leaves huge pages on: memory, not
    // correctness, is at stake.
    unsafe { prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Starts the thread that gives glibc's free memory back, for the life of
/// the process.
pub fn trim_glibc_heap() {
    std::thread::Builder::new()
        .name("tally-malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(TRIM_INTERVAL);
                give_back_glibc_free_memory();
            }
        })
        .expect("a thread to trim the heap starts");
}

fn give_back_glibc_free_memory() {
    // SAFETY: malloc_trim takes each arena's lock itself and has no other
    // precondition.
    unsafe { malloc_trim(0) };
}

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, c_char, c_void};

    unsafe extern "C" {
        /// Prints every option, one `option 'NAME': VALUE` line each.
        fn mi_options_print_out(out: libmimalloc_sys::mi_output_fun, arg: *mut c_void);
        fn malloc(size: usize) -> *mut c_void;
        fn free(block: *mut c_void);
    }

    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm is readable");
        let pages: usize = statm.split(' ').nth(1).and_then(|p| p.parse().ok()).expect("statm gives resident pages");
        pages * 4096
    }

    /// librdkafka's pattern: its threads allocate with glibc's malloc and a
    /// worker frees, and what stays allocated keeps the freed memory from
    /// the arena's top.
    #[test]
    fn glibc_memory_freed_amid_what_stays_is_given_back() {
        const BLOCK: usize = 4096;
        let blocks: Vec<usize> = std::thread::spawn(|| {
            (0..16_384)
                .map(|_| {
                    // SAFETY: a block of BLOCK bytes, written within them.
                    unsafe {
                        let block = malloc(BLOCK);
                        assert!(!block.is_null());
                        block.cast::<u8>().write_bytes(1, BLOCK);
                        block as usize
                    }
                })
                .collect()
        })
        .join()
        .expect("the allocating thread ends");
        let mut kept = Vec::new();
        for (index, block) in blocks.into_iter().enumerate() {
            if index % 64 == 63 {
                kept.push(block);
            } else {
                // SAFETY: allocated above by malloc, freed once.
                unsafe { free(block as *mut c_void) };
            }
        }
        let freed = resident_bytes();
        super::give_back_glibc_free_memory();
        let trimmed = resident_bytes();
        for block in kept {
            // SAFETY: allocated above by malloc, freed once.
            unsafe { free(block as *mut c_void) };
        }
        assert!(
            freed.saturating_sub(trimmed) > 32 << 20,
            "64 MiB freed, resident {} MiB before the trim and {} MiB after",
            freed >> 20,
            trimmed >> 20
        );
    }

    /// Blocks of every size up to 1 KiB, 64 of each so that pages fill,
    /// at every alignment up to 64 bytes; grown and shrunk again.
    #[test]
    fn blocks_are_aligned_as_their_layouts_ask() {
        use std::alloc::{GlobalAlloc, Layout};
        let allocator = super::Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64] {
            for size in 1..=1024 {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                let blocks: Vec<*mut u8> = (0..64)
                    .map(|i| {
                        // SAFETY: a layout of non-zero size; each block is freed below.
                        let block = unsafe {
                            if i % 2 == 0 { allocator.alloc(layout) } else { allocator.alloc_zeroed(layout) }
                        };
                        assert!(!block.is_null());
                        assert!(block.addr().is_multiple_of(align), "{size} bytes at {align}: {block:?}");
                        block
                    })
                    .collect();
                for block in blocks {
                    let new_size = size * 3 / 2 + 1;
                    // SAFETY: `block` came from `allocator` with `layout`, and is
                    // freed once, with the layout it has by then.
                    unsafe {
                        let grown = allocator.realloc(block, layout, new_size);
                        assert!(grown.addr().is_multiple_of(align), "{size} → {new_size} bytes at {align}: {grown:?}");
                        let grown_layout = Layout::from_size_align(new_size, align).expect("a valid layout");
                        let shrunk = allocator.realloc(grown, grown_layout, size);
                        assert!(
                            shrunk.addr().is_multiple_of(align),
                            "{new_size} → {size} bytes at {align}: {shrunk:?}"
                        );
                        allocator.dealloc(shrunk, layout);
                    }
                }
            }
        }
    }

    /// A size class that is not a power of two used to be left for the next
    /// class up once its first page was full.
    #[test]
    fn blocks_keep_their_size_class_after_a_page_fills() {
        use std::alloc::{GlobalAlloc, Layout};
        let allocator = super::Mimalloc;
        for (size, align) in [(48, 8), (48, 16), (80, 8), (96, 16), (112, 8), (200, 8)] {
            let layout = Layout::from_size_align(size, align).expect("a valid layout");
            let blocks: Vec<*mut u8> = (0..100_000)
                // SAFETY: a layout of non-zero size; each block is freed below.
                .map(|_| unsafe { allocator.alloc(layout) })
                .collect();
            // SAFETY: blocks mimalloc gave.
            let usable: std::collections::BTreeSet<usize> =
                blocks.iter().map(|&block| unsafe { libmimalloc_sys::mi_usable_size(block.cast()) }).collect();
            // SAFETY: no precondition.
            let class = unsafe { libmimalloc_sys::mi_good_size(size) };
            assert_eq!(usable, [class].into(), "{size}-byte blocks at {align}");
            for block in blocks {
                // SAFETY: allocated above with `layout`, freed once.
                unsafe { allocator.dealloc(block, layout) };
            }
        }
    }

    unsafe extern "C" fn append(message: *const c_char, printed: *mut c_void) {
        // SAFETY: `printed` is the `String` passed below, `message` a C
        // string mimalloc owns for the call.
        let (printed, message) = unsafe { (&mut *printed.cast::<String>(), CStr::from_ptr(message)) };
        printed.push_str(&message.to_string_lossy());
    }

    #[test]
    fn memory_is_given_back_a_page_at_a_time_half_a_second_after_it_is_freed() {
        super::configure();
        let mut printed = String::new();
        // SAFETY: `append` writes to `printed` only, during the call.
        unsafe { mi_options_print_out(Some(append), (&raw mut printed).cast()) };
        let option = |name: &str| {
            let line = printed.lines().find(|line| line.starts_with(&format!("option '{name}':")));
            line.and_then(|line| line.split(':').nth(1)).map(str::trim).unwrap_or_default()
        };
        assert_eq!(option("minimal_purge_size"), "0 KiB", "mimalloc's options: {printed}");
        assert_eq!(option("purge_delay"), "500", "mimalloc's options: {printed}");
        assert_eq!(option("arena_purge_mult"), "1", "mimalloc's options: {printed}");
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
        assert!(status.contains("THP_enabled:\t0"), "no transparent huge pages: {status}");
    }
}
