//! What the allocator keeps after a burst: glibc's malloc hands memory freed by a thread back to
//! that thread's arena, and raises its mmap threshold after the first large free, so each
//! Argon2 hash (a 19 MiB block, on whichever thread runs it) ends up kept in some arena for
//! good. Measured: RSS 49 MiB → 480 MiB after 5 bursts of 30 concurrent logins, and it stayed
//! there idle (`tests/abuse.rs`, `memory_stays_bounded_after_bursts_of_logins`).
//!
//! `bound_heap_retention` pins the mmap threshold at 128 KiB (which also stops glibc from
//! raising it): every block larger than that is its own mapping, returned to the kernel by
//! `free`. Small allocations are unaffected, and the large ones we make on hot paths are reused
//! (upload and hashing buffers), so the extra `mmap`/`munmap` pairs are one per hash or per
//! upload chunk, not per request. Chosen over reusing each hashing thread's Argon2 buffer
//! because rust-argon2 allocates its own and takes no buffer from the caller.
//!
//! Must never: be called after other threads have started allocating (call it first in `main`).

/// Large blocks go back to the kernel when freed (see the module doc).
pub fn bound_heap_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc malloc's tunables; it takes plain integers and is
    // called at start-up, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
