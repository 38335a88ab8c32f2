//! Transparent huge pages for the big buffers a step streams through.
//!
//! A decode step reads each layer's re-laid weights, the f16 lm_head and
//! every sequence's K/V rows; with 4 KB pages the K/V rows of one head
//! (a row of all kv heads apart: 2 KB for ttl-460m) touch a new page nearly
//! every read, and the page walks cost as much as the reads. Linux gives 2 MB
//! pages to a range marked `MADV_HUGEPAGE` when it is faulted in, where
//! transparent huge pages are `madvise` or `always` (a hint: elsewhere, or
//! when none is free, nothing changes).

/// Marks the whole 2 MB pages inside `len` bytes from `ptr` for huge pages.
/// Call it before the memory is first written: pages already faulted in
/// stay small until the kernel's background collapse, if ever.
#[cfg(target_os = "linux")]
pub(crate) fn advise_huge(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: madvise with MADV_HUGEPAGE only changes how the kernel
        // backs these pages (inside the caller's allocation); it moves and
        // frees nothing, and a failure leaves the range as it was.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_huge(_ptr: *mut u8, _len: usize) {}

/// Marks `v`'s buffer for huge pages; for a vector from `vec![0; n]`,
/// whose pages the allocator left untouched (zeroed by the kernel when
/// first faulted), so that they are faulted in as huge ones.
pub(crate) fn advise_vec<T>(v: &mut Vec<T>) {
    advise_huge(
        v.as_mut_ptr() as *mut u8,
        v.capacity() * std::mem::size_of::<T>(),
    );
}
