//! The component's allocator. Spin gives every request a fresh instance and resets its memory
//! afterwards, so nothing a request allocates needs to be reusable by a later one: small
//! allocations are bumped from a fixed arena and never freed (except the latest, which can
//! shrink, grow or go in place, as a `String` or `Vec` being built does), and the rest go to
//! the system allocator (wasi-libc's dlmalloc), as does everything once the arena is full.
//! A request's allocations are then a pointer bump instead of dlmalloc's bins.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};

/// Twice what the small allocations of a forwarded request or an answer from the store take
/// (all fit in 16 KiB), and within the memory the module starts with: a larger arena (64 KiB)
/// made the instance one page larger, which the runtime zeroes after every request.
const ARENA_BYTES: usize = 32 * 1024;
/// Larger allocations (bodies read whole, listings) go to dlmalloc, which can reuse their
/// memory when they grow or are dropped.
const SMALL: usize = 4 * 1024;

#[repr(C, align(16))]
struct Bytes([u8; ARENA_BYTES]);

pub struct Arena<A: GlobalAlloc = System> {
    bytes: UnsafeCell<Bytes>,
    /// The offset of the first free byte.
    next: Cell<usize>,
    /// Where the latest allocation starts, plus one (0: none): it alone can change size in
    /// place or be freed. Zero when empty, so that the arena is all zeros and takes no room in
    /// the module's data image, which the runtime copies back after every request.
    last: Cell<usize>,
    fallback: A,
}

// The component is one thread (wasm32-wasip2 without threads); the host tests own theirs.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<A: GlobalAlloc + Sync> Sync for Arena<A> {}

impl<A: GlobalAlloc> Arena<A> {
    pub const fn new(fallback: A) -> Self {
        Self {
            bytes: UnsafeCell::new(Bytes([0; ARENA_BYTES])),
            next: Cell::new(0),
            last: Cell::new(0),
            fallback,
        }
    }

    fn base(&self) -> *mut u8 {
        self.bytes.get().cast()
    }

    /// The offset of `ptr` in the arena, if it is one of the arena's.
    fn offset(&self, ptr: *mut u8) -> Option<usize> {
        let at = (ptr as usize).wrapping_sub(self.base() as usize);
        (at < ARENA_BYTES).then_some(at)
    }

    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        if layout.size() > SMALL || layout.align() > SMALL {
            return None;
        }
        // An alignment is a power of two: a mask, not a division (which is slow in wasm).
        let mask = layout.align() - 1;
        let base = self.base() as usize;
        let start = ((base + self.next.get() + mask) & !mask) - base;
        let end = start + layout.size();
        if end > ARENA_BYTES {
            return None;
        }
        self.next.set(end);
        self.last.set(start + 1);
        // In bounds: `start + size <= ARENA_BYTES`.
        Some(unsafe { self.base().add(start) })
    }
}

// Each method out of line: inlined into every caller, they made the module 15% larger for no
// fewer instructions.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Arena<A> {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            None => unsafe { self.fallback.alloc(layout) },
        }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            // The arena's bytes can be a freed allocation's.
            Some(ptr) => unsafe {
                ptr.write_bytes(0, layout.size());
                ptr
            },
            None => unsafe { self.fallback.alloc_zeroed(layout) },
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.offset(ptr) {
            Some(at) if at + 1 == self.last.get() => {
                self.next.set(at);
                self.last.set(0);
            }
            Some(_) => {}
            None => unsafe { self.fallback.dealloc(ptr, layout) },
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(at) = self.offset(ptr) else {
            return unsafe { self.fallback.realloc(ptr, layout, new_size) };
        };
        if at + 1 == self.last.get() && new_size <= SMALL && at + new_size <= ARENA_BYTES {
            self.next.set(at + new_size);
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // Safety: the caller's `layout.align()` is valid and `new_size` does not overflow it.
        let grown = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(grown) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn small_allocations_come_from_the_arena_large_ones_from_the_fallback() {
        let arena = Box::new(Arena::new(System));
        unsafe {
            let a = arena.alloc(layout(24));
            let b = arena.alloc(layout(SMALL + 1));
            assert!(arena.offset(a).is_some());
            assert!(arena.offset(b).is_none());
            arena.dealloc(b, layout(SMALL + 1));
            arena.dealloc(a, layout(24));
        }
    }

    #[test]
    fn the_latest_allocation_grows_in_place_and_is_freed() {
        let arena = Box::new(Arena::new(System));
        unsafe {
            let a = arena.alloc(layout(16));
            let b = arena.alloc(layout(16));
            assert_eq!(arena.realloc(b, layout(16), 100), b);
            assert_eq!(arena.next.get(), arena.offset(b).unwrap() + 100);
            arena.dealloc(b, layout(100));
            let c = arena.alloc(layout(8));
            assert_eq!(c, b, "the freed latest allocation is reused");
            // `a` is no longer the latest: it moves to grow, keeping its bytes.
            a.write_bytes(7, 16);
            let moved = arena.realloc(a, layout(16), 64);
            assert_ne!(moved, a);
            assert_eq!(std::slice::from_raw_parts(moved, 16), &[7; 16]);
        }
    }

    /// Drawn sequences of allocations, growths, shrinks and frees: every live block keeps its
    /// bytes and its alignment, and no two overlap.
    #[test]
    fn drawn_sequences_keep_every_block_whole() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut draw = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..100 {
            let arena = Box::new(Arena::new(System));
            // (pointer, layout, fill byte)
            let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
            for step in 0..200u32 {
                let fill = step as u8;
                match draw(4) {
                    0 | 1 => {
                        let size = [1, 7, 24, 100, 1000, SMALL, SMALL + 1, 9000][draw(8)];
                        let l = Layout::from_size_align(size, 1 << draw(7)).unwrap();
                        let p = unsafe { arena.alloc(l) };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % l.align(), 0);
                        unsafe { p.write_bytes(fill, size) };
                        live.push((p, l, fill));
                    }
                    2 if !live.is_empty() => {
                        let (p, l, f) = live.swap_remove(draw(live.len()));
                        let size = [1, 16, 300, 3000, SMALL + 100][draw(5)];
                        let q = unsafe { arena.realloc(p, l, size) };
                        let kept = size.min(l.size());
                        assert!(unsafe { std::slice::from_raw_parts(q, kept) }
                            .iter()
                            .all(|b| *b == f));
                        unsafe { q.write_bytes(fill, size) };
                        let l = Layout::from_size_align(size, l.align()).unwrap();
                        live.push((q, l, fill));
                    }
                    _ if !live.is_empty() => {
                        let (p, l, _) = live.swap_remove(draw(live.len()));
                        unsafe { arena.dealloc(p, l) };
                    }
                    _ => {}
                }
                for (p, l, f) in live.iter().filter(|_| step % 8 == 0) {
                    let bytes = unsafe { std::slice::from_raw_parts(*p, l.size()) };
                    assert!(bytes.iter().all(|b| b == f), "a block lost its bytes");
                }
            }
            for (p, l, _) in live {
                unsafe { arena.dealloc(p, l) };
            }
        }
    }

    #[test]
    fn alignment_is_kept() {
        let arena = Box::new(Arena::new(System));
        unsafe {
            arena.alloc(layout(3));
            for align in [1, 2, 8, 16, 64, 4096] {
                let p = arena.alloc(Layout::from_size_align(5, align).unwrap());
                assert_eq!(p as usize % align, 0, "align {align}");
            }
        }
    }

    #[test]
    fn a_full_arena_hands_on_to_the_fallback_and_grown_blocks_leave_it() {
        let arena = Box::new(Arena::new(System));
        unsafe {
            let mut last = std::ptr::null_mut();
            for _ in 0..ARENA_BYTES / SMALL + 2 {
                last = arena.alloc(layout(SMALL));
                assert!(!last.is_null());
            }
            assert!(arena.offset(last).is_none());
            arena.dealloc(last, layout(SMALL));
            let fresh = Box::new(Arena::new(System));
            let p = fresh.alloc(layout(64));
            p.write_bytes(9, 64);
            let big = fresh.realloc(p, layout(64), SMALL * 4);
            assert!(fresh.offset(big).is_none());
            assert_eq!(std::slice::from_raw_parts(big, 64), &[9; 64]);
            fresh.dealloc(big, layout(SMALL * 4));
        }
    }
}
