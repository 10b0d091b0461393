//! The process's allocator, mimalloc, and the two settings it runs with.
//!
//! mimalloc rather than the system's: checkpoints encode whole operator
//! states into large, short-lived buffers, and glibc's per-thread arenas
//! keep such memory instead of returning it.
//!
//! Every epoch allocates its batches and frees them again. mimalloc gives
//! memory left free back to the system, by default in pieces as small as a
//! 4 KiB page, out of regions it asks the kernel to back with 2 MiB
//! transparent huge pages. Each such piece splits its huge page, and the
//! next epoch's batches fault fresh huge pages in, which the kernel zeroes
//! whole: a drain spent about a fifth of its workers' time zeroing pages.
//! Told to give memory back in whole huge pages only, it keeps the pages an
//! epoch reuses and still returns what a shrinking state leaves free.
//!
//! It also gives memory back one second after it was freed, by default. A
//! live run's epochs are two seconds apart and its checkpoints ten: each
//! epoch's batches and each checkpoint's encoded state were freed, given
//! back, and faulted in again, zeroed, by the next. With the delay at ten
//! seconds they find the pages the last one left; memory a shrinking state
//! no longer uses still goes back, ten seconds later.
//!
//! The settings are calls into mimalloc, hence this module's one `unsafe`
//! block; the library crates forbid `unsafe` outright.

#![expect(unsafe_code, reason = "mimalloc's options are set through its C interface only")]

use std::ffi::c_long;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_allow_thp` and `mi_option_purge_delay`: their places in
/// mimalloc 3's `mi_option_t`, which the bindings do not name (they list
/// mimalloc 2's options).
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Huge pages allowed, and memory given back in whole huge pages only.
const WHOLE_HUGE_PAGES: c_long = 2;
/// Milliseconds memory stays free before it is given back.
const TEN_SECONDS: c_long = 10_000;

/// Sets mimalloc's options; called first thing, before any thread starts.
pub fn configure() {
    // SAFETY: writes two options of mimalloc's table, read when it gives
    // memory back; no other thread runs yet.
    unsafe {
        libmimalloc_sys::mi_option_set(ALLOW_THP, WHOLE_HUGE_PAGES);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, TEN_SECONDS);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, c_char, c_void};

    unsafe extern "C" {
        /// Prints every option, one `option 'NAME': VALUE` line each.
        fn mi_options_print_out(out: libmimalloc_sys::mi_output_fun, arg: *mut c_void);
    }

    unsafe extern "C" fn append(message: *const c_char, printed: *mut c_void) {
        // SAFETY: `printed` is the `String` passed below, `message` a C
        // string mimalloc owns for the call.
        let (printed, message) = unsafe { (&mut *printed.cast::<String>(), CStr::from_ptr(message)) };
        printed.push_str(&message.to_string_lossy());
    }

    #[test]
    fn memory_is_given_back_in_whole_huge_pages_ten_seconds_after_it_is_freed() {
        super::configure();
        let mut printed = String::new();
        // SAFETY: `append` writes to `printed` only, during the call.
        unsafe { mi_options_print_out(Some(append), (&raw mut printed).cast()) };
        assert!(printed.contains("option 'allow_thp': 2"), "mimalloc's options: {printed}");
        assert!(printed.contains("option 'purge_delay': 10000"), "mimalloc's options: {printed}");
    }
}
