//! Client buffers between transactions: a client that goes idle (or closes) hands its
//! (empty) buffers to a per-thread free list and takes one back when its next message
//! arrives. Idle clients hold no buffers at all, and a busy one neither allocates nor arms
//! a timer per transaction (a free list hit is a `Vec` pop).

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a fresh buffer.
pub const BUF_SIZE: usize = 8 * 1024;
/// Buffers that grew past this (a large row or message) are freed rather than kept.
const KEEP_CAPACITY: usize = 64 * 1024;
/// Free buffers kept per thread: enough for every client active at once on a busy thread,
/// bounded so a burst (of logins, say) does not pin memory (64 x 8 KiB = 512 KiB).
const KEEP_COUNT: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with at least [`BUF_SIZE`] bytes of room.
pub fn take() -> BytesMut {
    FREE.with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
}

/// Gives `buf` back if it is empty; leaves an unallocated buffer in its place.
pub fn give(buf: &mut BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let mut buf = std::mem::take(buf);
    // Reclaims the room in front of an advanced cursor, without allocating (the buffer is
    // empty and, once nothing else shares it, unique).
    buf.clear();
    if !buf.try_reclaim(BUF_SIZE) || buf.capacity() > KEEP_CAPACITY {
        return;
    }
    // `try_with`: a client stream dropped while the thread exits just frees its buffer.
    let _ = FREE.try_with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP_COUNT {
            free.push(buf);
        }
    });
}

/// Makes room to read into `buf` (at least `min` spare bytes), from the free list when it
/// holds nothing.
pub fn room(buf: &mut BytesMut, min: usize) {
    if buf.capacity() == 0 {
        *buf = take();
    } else if buf.capacity() - buf.len() < min {
        buf.reserve(BUF_SIZE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_only_empty_ones_given_back() {
        let mut a = take();
        let ptr = a.as_ptr();
        a.extend_from_slice(b"abc");
        give(&mut a);
        assert_eq!(a.len(), 3, "a buffer holding bytes is kept");
        let _ = a.split_to(3);
        give(&mut a);
        assert_eq!(a.capacity(), 0);
        let b = take();
        assert_eq!(b.as_ptr(), ptr, "the freed buffer comes back");
        assert!(b.capacity() >= BUF_SIZE - 3 && b.is_empty());
        let mut big = BytesMut::with_capacity(4 * KEEP_CAPACITY);
        give(&mut big);
        // Not kept: the next buffer is a fresh one (the allocator may well hand out the same
        // address again, so its size says it, not its pointer).
        assert!(
            take().capacity() < 4 * KEEP_CAPACITY,
            "an overgrown buffer is freed"
        );
    }
}
