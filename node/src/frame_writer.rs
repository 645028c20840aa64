//! Writes length-prefixed frames ([`FrameCodec`]'s format) without copying large payloads.
//!
//! `FramedWrite` copies every encoded frame into its write buffer before the socket gets it:
//! on a leader that is each replicated batch twice more (once per follower's link) and each
//! fetched one once, 1.9% of a node's CPU at 65,000 records/s. [`FrameWriter`] copies only
//! length prefixes and small payloads into a staging buffer; a payload of
//! [`COPY_BELOW_BYTES`] or more is queued as the [`Bytes`] it already is, and the queue goes
//! to the socket in vectored writes (`writev`), up to 64 slices a call.
//!
//! It is a [`Sink`] of encoded payloads like `FramedWrite<_, FrameCodec>`, with the same
//! refusal of a payload over `frame_bytes_max`, and the same bound on what it holds: past
//! [`BACKPRESSURE_BYTES`] queued, `poll_ready` writes before it accepts more.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cairn_protocol::frame::FrameError;
use futures::Sink;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// Payloads shorter than this are copied next to their prefix (cheaper than a slice of
/// their own); longer ones are written from where they are.
pub const COPY_BELOW_BYTES: usize = 4096;
/// Bytes queued past which the writer writes before it takes another frame.
pub const BACKPRESSURE_BYTES: usize = 256 * 1024;
/// Slices handed to one vectored write (tokio's own `write_all_buf` uses as many).
const SLICES_PER_WRITE: usize = 64;

/// Frames queued for the socket, as slices of owned buffers.
#[derive(Default)]
struct Queue {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Queue {
    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }
}

impl Buf for Queue {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |part| part.as_ref())
    }

    fn chunks_vectored<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slice, part) in slices.iter_mut().zip(&self.parts) {
            *slice = IoSlice::new(part);
            filled += 1;
        }
        filled
    }

    fn advance(&mut self, mut count: usize) {
        assert!(count <= self.remaining, "advanced past the queued bytes");
        self.remaining -= count;
        while count > 0 {
            let front = self.parts.front_mut().expect("bytes remain");
            if count < front.len() {
                front.advance(count);
                return;
            }
            count -= front.len();
            self.parts.pop_front();
        }
    }
}

/// A [`Sink`] of frame payloads onto `W` (see the module docs).
pub struct FrameWriter<W> {
    inner: W,
    frame_bytes_max: usize,
    /// Prefixes and small payloads not yet moved to `queue`.
    staging: BytesMut,
    queue: Queue,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W, frame_bytes_max: usize) -> FrameWriter<W> {
        FrameWriter {
            inner,
            frame_bytes_max,
            staging: BytesMut::new(),
            queue: Queue::default(),
        }
    }

    /// Bytes accepted and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queue.remaining + self.staging.len()
    }

    fn stage(&mut self) {
        if !self.staging.is_empty() {
            let staged = self.staging.split().freeze();
            self.queue.push(staged);
        }
    }

    /// Writes until at most `keep` bytes are queued.
    fn poll_write_down(
        &mut self,
        cx: &mut Context<'_>,
        keep: usize,
    ) -> Poll<Result<(), FrameError>> {
        self.stage();
        while self.queue.remaining > keep {
            let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
            let count = self.queue.chunks_vectored(&mut slices);
            let written =
                ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(FrameError::Io(std::io::ErrorKind::WriteZero.into())));
            }
            self.queue.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<Bytes> for FrameWriter<W> {
    type Error = FrameError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        if self.queued_bytes() < BACKPRESSURE_BYTES {
            return Poll::Ready(Ok(()));
        }
        self.poll_write_down(cx, BACKPRESSURE_BYTES - 1)
    }

    fn start_send(mut self: Pin<&mut Self>, payload: Bytes) -> Result<(), FrameError> {
        if payload.len() > self.frame_bytes_max {
            return Err(FrameError::TooLarge {
                size: payload.len(),
                max: self.frame_bytes_max,
            });
        }
        let length = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
            size: payload.len(),
            max: u32::MAX as usize,
        })?;
        self.staging.put_u32(length);
        if payload.len() < COPY_BELOW_BYTES {
            self.staging.extend_from_slice(&payload);
        } else {
            self.stage();
            self.queue.push(payload);
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        ready!(self.poll_write_down(cx, 0))?;
        Poll::Ready(ready!(Pin::new(&mut self.inner).poll_flush(cx)).map_err(FrameError::Io))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Poll::Ready(ready!(Pin::new(&mut self.inner).poll_shutdown(cx)).map_err(FrameError::Io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::frame::FrameCodec;
    use futures::{SinkExt, StreamExt};
    use tokio_util::codec::FramedRead;

    /// A writer that takes at most `per_write` bytes a call, vectored or not, so frames cross
    /// write boundaries anywhere.
    struct Trickle {
        written: Vec<u8>,
        per_write: usize,
        vectored_calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let taken = bytes.len().min(self.per_write);
            self.written.extend_from_slice(&bytes[..taken]);
            Poll::Ready(Ok(taken))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            slices: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.vectored_calls += 1;
            let mut taken = 0;
            for slice in slices {
                let room = self.per_write - taken;
                let part = slice.len().min(room);
                self.written.extend_from_slice(&slice[..part]);
                taken += part;
                if taken == self.per_write {
                    break;
                }
            }
            Poll::Ready(Ok(taken))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn payloads() -> Vec<Bytes> {
        [
            0usize,
            1,
            17,
            COPY_BELOW_BYTES - 1,
            COPY_BELOW_BYTES,
            70_000,
            3,
            300_000,
            5,
        ]
        .iter()
        .enumerate()
        .map(|(index, &size)| Bytes::from(vec![index as u8 + 1; size]))
        .collect()
    }

    /// Small and large payloads, fed and sent, through writes of any size: the bytes are
    /// exactly what `FrameCodec` reads back as the same frames, in order.
    #[tokio::test]
    async fn frames_cross_any_write_boundary_and_read_back_in_order() {
        for per_write in [1, 7, 4096, 1 << 20] {
            let trickle = Trickle {
                written: Vec::new(),
                per_write,
                vectored_calls: 0,
            };
            let mut writer = FrameWriter::new(trickle, 1 << 20);
            let sent = payloads();
            for (index, payload) in sent.iter().enumerate() {
                if index % 3 == 0 {
                    writer.send(payload.clone()).await.unwrap();
                } else {
                    writer.feed(payload.clone()).await.unwrap();
                }
            }
            writer.flush().await.unwrap();
            assert_eq!(writer.queued_bytes(), 0);
            assert!(writer.inner.vectored_calls > 0);
            let written = std::mem::take(&mut writer.inner.written);
            let framed: Vec<Bytes> = FramedRead::new(&written[..], FrameCodec::new(1 << 20))
                .map(|frame| frame.unwrap().freeze())
                .collect()
                .await;
            assert_eq!(framed, sent, "writes of {per_write} bytes");
        }
    }

    /// Over the frame maximum: refused, typed, and nothing of it is queued.
    #[tokio::test]
    async fn an_oversize_payload_is_refused_and_leaves_nothing_queued() {
        let trickle = Trickle {
            written: Vec::new(),
            per_write: 1024,
            vectored_calls: 0,
        };
        let mut writer = FrameWriter::new(trickle, 100);
        let refused = writer.feed(Bytes::from(vec![0u8; 101])).await;
        assert!(matches!(
            refused,
            Err(FrameError::TooLarge {
                size: 101,
                max: 100
            })
        ));
        assert_eq!(writer.queued_bytes(), 0);
        writer.send(Bytes::from_static(b"ok")).await.unwrap();
        assert_eq!(writer.inner.written, b"\0\0\0\x02ok");
    }

    /// What is accepted stays bounded: feeding more than the bound writes some of it first.
    #[tokio::test]
    async fn feeding_past_the_bound_writes_before_accepting_more() {
        let trickle = Trickle {
            written: Vec::new(),
            per_write: 1 << 20,
            vectored_calls: 0,
        };
        let mut writer = FrameWriter::new(trickle, 1 << 20);
        for _ in 0..10 {
            writer.feed(Bytes::from(vec![9u8; 100_000])).await.unwrap();
            assert!(writer.queued_bytes() < BACKPRESSURE_BYTES + 100_004);
        }
        assert!(!writer.inner.written.is_empty());
    }
}
