//! What every fuzz target shares: the node's default limits, and the allocator that holds
//! each target to "no allocation beyond the frame limit".
//!
//! The targets (`fuzz_targets/`) feed untrusted bytes to the decoders the node runs on them,
//! from `cairn-protocol` itself, never copies:
//!
//! - `frame_codec`: a byte stream, cut into arbitrary chunks, through [`FrameCodec`] and every
//!   frame through the request decoder, as a client connection is read.
//! - `request_envelope`: one frame through `decode_request_within` and `count_entries` with
//!   the node's entry limit, and through the client's `decode_response`.
//! - `record_batch`: one batch through `RecordBatch::validate`, its records, and a rebuild
//!   with `RecordBatchBuilder`; also `split_batches`, as a consumer reads a fetch.
//! - `peer_message`: one frame through each peer decoder (hello, challenge, proof, frame).
//!
//! A decoder that sizes a buffer from a length it read (a MessagePack array length, a record
//! count) instead of from the bytes it holds can be made to allocate far more than a frame
//! holds; [`BoundedAllocator`] turns any such allocation into a crash that libFuzzer reports
//! and saves, whether or not the allocation would have succeeded.
//!
//! [`FrameCodec`]: cairn_protocol::frame::FrameCodec

use cairn_protocol::frame::{
    FRAME_BYTES_MAX_DEFAULT, LENGTH_PREFIX_BYTES, REQUEST_ENTRIES_MAX_DEFAULT,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The node's default `limits.frame_bytes_max`, which its listener cuts frames with.
pub const FRAME_BYTES_MAX: usize = FRAME_BYTES_MAX_DEFAULT as usize;

/// The node's default `limits.request_entries_max`.
pub const REQUEST_ENTRIES_MAX: u64 = REQUEST_ENTRIES_MAX_DEFAULT as u64;

/// The largest single allocation a target may make: one frame and its length prefix, which
/// is what the codec reserves once a frame's length has arrived and its payload has not.
/// Every input libFuzzer generates is far smaller than a frame (`-max_len`), so a decoder
/// that stays within this bound sizes what it allocates by the bytes it was given.
pub const ALLOCATION_BYTES_MAX: usize = FRAME_BYTES_MAX + LENGTH_PREFIX_BYTES;

/// The system allocator, aborting the process on any allocation or reallocation larger than
/// [`ALLOCATION_BYTES_MAX`]. An abort is what libFuzzer reports as a crash (a deadly signal)
/// and saves the input of; a panic here could itself allocate while unwinding.
pub struct BoundedAllocator;

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

fn refuse_oversized(size: usize) {
    if size <= ALLOCATION_BYTES_MAX {
        return;
    }
    // Formatted by hand into a stack buffer: formatting with `format!` would allocate.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = size;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut stderr = std::io::stderr();
    let _ = stderr.write_all(b"\n==cairn-fuzz== allocation of ");
    let _ = stderr.write_all(&digits[start..]);
    let _ = stderr.write_all(
        b" bytes exceeds the bound of one frame (ALLOCATION_BYTES_MAX, fuzz/src/lib.rs)\n",
    );
    std::process::abort();
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the only addition is a size check before it, which never touches memory.
unsafe impl GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        refuse_oversized(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        refuse_oversized(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout)
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        refuse_oversized(new_size);
        System.realloc(pointer, layout, new_size)
    }
}
