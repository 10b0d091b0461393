//! The process's allocator, mimalloc, and the setting it runs with.
//!
//! mimalloc rather than the system's: checkpoints encode whole operator
//! states into large, short-lived buffers, and glibc's per-thread arenas
//! keep such memory instead of returning it.
//!
//! Every epoch allocates its batches and frees them again, and every
//! checkpoint its encoded state. mimalloc gives memory left free back to the
//! system one second after it was freed, by default. A live run's epochs are
//! two seconds apart and its checkpoints ten: each epoch's batches and each
//! checkpoint's encoded state were freed, given back, and faulted in again,
//! zeroed, by the next. With the delay at ten seconds they find the pages
//! the last one left; memory a shrinking state no longer uses still goes
//! back, ten seconds later.
//!
//! mimalloc gives memory back in pieces as small as a 4 KiB page, out of
//! regions backed by 2 MiB transparent huge pages, which each piece splits.
//! With the one-second delay a drain spent a fifth of its workers' time
//! zeroing the huge pages faulted in again, and tally had memory given back
//! in whole huge pages only. With the ten-second delay that setting saves
//! a drain about 1% of its time and a live run nothing measurable in
//! freshness, and it kept resident every huge page in which a single block
//! was still allocated: a live run idle over a million resources held
//! 1,097 MiB resident for 763 MiB allocated, and 979 MiB given back a page
//! at a time, mimalloc's default, which it now runs with.
//!
//! mimalloc serves Rust's allocations only: librdkafka allocates its fetch
//! buffers and messages with glibc's malloc, and the workers free the
//! messages, into the arenas of librdkafka's threads. glibc gives an arena's
//! free memory back only from its top, so a live run that had caught up with
//! a backlog kept 240 MiB of it resident, free and never used again, while
//! its whole state took 11 MB. A thread of its own asks glibc to give it
//! back (`malloc_trim`) every ten seconds.
//!
//! The settings and the trim are calls into the C libraries, hence this
//! module's `unsafe` blocks; the library crates forbid `unsafe` outright.

#![expect(unsafe_code, reason = "mimalloc's options and glibc's trim are C interfaces only")]

use std::ffi::{c_int, c_long};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its place in mimalloc 3's `mi_option_t`, which
/// the bindings do not name (they list mimalloc 2's options).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds memory stays free before it is given back.
const TEN_SECONDS: c_long = 10_000;

/// How often glibc is asked to give its free memory back.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

unsafe extern "C" {
    /// glibc's: gives the free memory of every arena back to the system,
    /// keeping `pad` bytes at the top of the main one.
    fn malloc_trim(pad: usize) -> c_int;
}

/// Sets mimalloc's purge delay; called first thing, before any thread starts.
pub fn configure() {
    // SAFETY: writes one option of mimalloc's table, read when it gives
    // memory back; no other thread runs yet.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, TEN_SECONDS) };
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

    unsafe extern "C" fn append(message: *const c_char, printed: *mut c_void) {
        // SAFETY: `printed` is the `String` passed below, `message` a C
        // string mimalloc owns for the call.
        let (printed, message) = unsafe { (&mut *printed.cast::<String>(), CStr::from_ptr(message)) };
        printed.push_str(&message.to_string_lossy());
    }

    #[test]
    fn memory_is_given_back_a_page_at_a_time_ten_seconds_after_it_is_freed() {
        super::configure();
        let mut printed = String::new();
        // SAFETY: `append` writes to `printed` only, during the call.
        unsafe { mi_options_print_out(Some(append), (&raw mut printed).cast()) };
        assert!(printed.contains("option 'minimal_purge_size': 0"), "mimalloc's options: {printed}");
        assert!(!printed.contains("option 'allow_thp': 2"), "mimalloc's options: {printed}");
        assert!(printed.contains("option 'purge_delay': 10000"), "mimalloc's options: {printed}");
    }
}
