//! The global allocator of Loam's long-running and transfer-heavy binaries
//! (`uplink`, `storagenode`): mimalloc, with one exception for sparse
//! reservations.
//!
//! mimalloc rather than the C library's allocator: transfers allocate and
//! free many short-lived buffers (QUIC datagrams, frames) across threads,
//! and glibc's allocator kept handing their memory back to the kernel and
//! faulting it in again (see `docs/performance.md`).
//!
//! mimalloc backs its arenas with transparent huge pages, which is what
//! dense buffers want: one fault per 2 MiB instead of 512. A large zeroed
//! allocation is often not dense but a reservation touched here and there:
//! quinn's receive buffer is 128 MiB (32 datagram slots of 64 GRO segments
//! of up to 64 KiB), of which a download touches the first 64 KiB of each
//! slot. With huge pages every touched slot costs a zeroed 2 MiB page:
//! ~64 MiB of zeroing per process and per endpoint, and that much resident
//! memory. [`Allocator`] asks the kernel for ordinary pages for zeroed
//! allocations of [`SPARSE_ZEROED`] or more, so only what is touched is
//! zeroed and resident.

use std::alloc::{GlobalAlloc, Layout};

/// Zeroed allocations at least this large are treated as sparse: larger
/// than any buffer Loam fills whole (segments are at most 64 MiB and are
/// never allocated zeroed).
pub const SPARSE_ZEROED: usize = 64 << 20;

/// mimalloc, with ordinary pages for large zeroed allocations.
pub struct Allocator;

/// How the kernel should back some pages.
#[derive(Clone, Copy)]
pub(crate) enum PageAdvice {
    /// Transparent huge pages (one fault per 2 MiB).
    Huge,
    /// Ordinary 4 KiB pages only.
    Ordinary,
}

/// Gives `advice` for the whole `granule`-aligned runs of `granule` bytes
/// inside `[ptr, ptr + len)`, memory the caller's allocation owns. Best
/// effort: a kernel without transparent huge pages (or with them off)
/// refuses or ignores it, which changes nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn advise_pages(ptr: *mut u8, len: usize, granule: usize, advice: PageAdvice) {
    use nix::sys::mman::{MmapAdvise, madvise};
    let start = ptr as usize;
    let aligned = start.next_multiple_of(granule);
    let whole = (start + len).saturating_sub(aligned) / granule * granule;
    let Some(addr) = std::ptr::NonNull::new(ptr.wrapping_add(aligned - start)) else {
        return;
    };
    if whole == 0 {
        return;
    }
    let advice = match advice {
        PageAdvice::Huge => MmapAdvise::MADV_HUGEPAGE,
        PageAdvice::Ordinary => MmapAdvise::MADV_NOHUGEPAGE,
    };
    // SAFETY: [addr, addr + whole) lies inside the caller's allocation.
    // Either advice changes only how the kernel backs those pages, never
    // what they contain, so no memory Rust can see changes.
    let _ = unsafe { madvise(addr.cast(), whole, advice) };
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_pages(_ptr: *mut u8, _len: usize, _granule: usize, _advice: PageAdvice) {}

// A global allocator must implement an unsafe trait; every method forwards
// to mimalloc unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !ptr.is_null() && layout.size() >= SPARSE_ZEROED {
            // Ordinary pages: only what is touched is zeroed and resident.
            advise_pages(ptr, layout.size(), 4096, PageAdvice::Ordinary);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse zeroed allocation is zero wherever it is read, writable
    /// anywhere, and freed like any other; small ones are untouched.
    #[test]
    fn sparse_zeroed_allocations_read_as_zero_and_work_as_memory() {
        for size in [SPARSE_ZEROED, SPARSE_ZEROED + 12_345, 4096] {
            let layout = Layout::from_size_align(size, 64).expect("layout");
            #[allow(unsafe_code)]
            // SAFETY: the layout has a non-zero size; every access below
            // stays inside the allocation, which is freed once with its
            // layout.
            unsafe {
                let p = Allocator.alloc_zeroed(layout);
                assert!(!p.is_null());
                let probes = [0, size / 3, size / 2 + 7, size - 1];
                for &at in &probes {
                    assert_eq!(*p.add(at), 0, "byte {at} of {size}");
                    *p.add(at) = 0xA5;
                }
                for &at in &probes {
                    assert_eq!(*p.add(at), 0xA5);
                }
                Allocator.dealloc(p, layout);
            }
        }
    }

    /// On Linux with transparent huge pages on offer, the sparse
    /// allocation's mapping is marked for ordinary pages.
    #[cfg(target_os = "linux")]
    #[test]
    fn sparse_zeroed_allocations_ask_for_ordinary_pages() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !thp.contains("[madvise]") && !thp.contains("[always]") {
            eprintln!("transparent huge pages are off here; nothing to check");
            return;
        }
        let layout = Layout::from_size_align(SPARSE_ZEROED, 64).expect("layout");
        #[allow(unsafe_code)]
        // SAFETY: non-zero size; freed once below with its layout.
        let p = unsafe { Allocator.alloc_zeroed(layout) };
        assert!(!p.is_null());
        let middle = p as usize + SPARSE_ZEROED / 2;
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut in_region = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                in_region = lo <= middle && middle < hi;
            } else if in_region && let Some(f) = line.strip_prefix("VmFlags:") {
                flags = Some(f.to_string());
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: allocated above with this layout, freed once.
        unsafe {
            Allocator.dealloc(p, layout)
        };
        let flags = flags.expect("the allocation's mapping is listed");
        assert!(
            flags.split_whitespace().any(|f| f == "nh"),
            "mapping flags: {flags}"
        );
    }
}
