//! Kafka's compression codecs for the records of a batch: gzip, snappy, lz4 and zstd.
//!
//! A compressed batch keeps its 65-byte header as is; the bytes after it are the records,
//! compressed as one block by the producer (attributes bits 0-2 name the codec). The checksum
//! covers the compressed bytes, so the batch is stored, replicated and served exactly as the
//! producer sent it: nothing here re-encodes a batch. Records are decompressed only to
//! validate them (the broker's produce path) and to read them (consumers, tools).
//!
//! Decompression reads hostile input: every decoder here is bounded by `decompressed_bytes_max`
//! and never allocates more than that for its output (a decompression bomb is refused with
//! [`DecompressError::TooLarge`] once the bound is passed, not after inflating it all).
//! Malformed data is [`DecompressError::Malformed`], never a panic.
//!
//! The formats, as Kafka's clients write them:
//! - gzip (codec 1): RFC 1952 gzip members (the Java client's `GZIPOutputStream`, librdkafka's
//!   zlib); several concatenated members are read as one stream, as Java's reader does.
//! - snappy (codec 2): the Java client writes xerial's framing (an 8-byte magic, two
//!   versions, then blocks each prefixed with its compressed length); librdkafka writes one
//!   raw snappy block. Both are read; framing is recognised by its magic, as every Kafka
//!   client does. Cairn writes the xerial framing, which every client reads.
//! - lz4 (codec 3): the LZ4 frame format (record batch v2 fixed Kafka's old header-checksum
//!   quirk, so a v2 batch is a standard frame).
//! - zstd (codec 4): zstd frames. The decoder's window is bounded too: a frame declaring a
//!   window larger than the bound (or than 8 MiB, for a bound below that, since streaming
//!   encoders declare up to 8 MiB whatever they compress) is refused.
//!
//! Besides the output, the decoders hold working memory of their own, bounded by the formats:
//! lz4's block buffers (at most 4 MiB, as its frame declares) and zstd's window (above).

use std::io::{Read, Write};

/// Kafka's compression codecs, by their attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

/// The default bound on a batch's decompressed records (`limits.batch_decompressed_bytes_max`
/// on a node): 32 times the default largest batch, far above what real data compresses by.
pub const DECOMPRESSED_BYTES_MAX_DEFAULT: usize = 32 * 1024 * 1024;

/// The bound readers use, and the largest `limits.batch_decompressed_bytes_max` may be: a
/// batch a leader accepted under its own limit is read by followers and consumers under this
/// one, so no reader refuses what a leader stored.
pub const DECOMPRESSED_BYTES_CEILING: usize = 256 * 1024 * 1024;

/// The name of the node limit a decompression bomb exceeds.
pub const DECOMPRESSED_BYTES_LIMIT_NAME: &str = "limits.batch_decompressed_bytes_max";

/// xerial's snappy framing: magic, then version 1 and the oldest compatible version 1.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_BYTES: usize = 16;
/// Uncompressed bytes per xerial block Cairn writes (the Java client's default block size).
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;
/// The smallest window a zstd frame may always declare, whatever the bound: 8 MiB, what
/// streaming encoders (the Java client's zstd-jni among them) declare up to level 19 when they
/// do not know the size in advance. A bound of 1 MiB must not refuse those frames.
const ZSTD_WINDOW_LOG_FLOOR: u32 = 23;
/// The largest window a frame may declare: zstd's own default limit (128 MiB).
const ZSTD_WINDOW_LOG_CEILING: u32 = 27;
/// The level Cairn compresses zstd at: the library's default, as Kafka's clients use.
const ZSTD_LEVEL: i32 = 3;
/// Bytes a decoder is read by per step; the output grows from this (geometrically, up to the
/// bound), so a bound far above the data never becomes an allocation of the bound.
const READ_STEP_BYTES: usize = 64 * 1024;

/// Why compressed records could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    #[error("{codec} records decompress to more than {max} bytes")]
    TooLarge { codec: &'static str, max: usize },
    #[error("{codec} records are malformed: {reason}")]
    Malformed { codec: &'static str, reason: String },
}

impl Compression {
    /// The codec for attribute bits 0-2; `None` for values Kafka does not define (5-7).
    pub fn from_codec(codec: u8) -> Option<Compression> {
        match codec {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The attribute value (Kafka's codec id).
    pub fn codec(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The name clients and the CLI use (Kafka's `compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// Compresses records (producers). `None` copies them.
    pub fn compress(self, records: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => records.to_vec(),
            Compression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(records.len() / 2 + 64),
                    flate2::Compression::default(),
                );
                encoder
                    .write_all(records)
                    .expect("writing to a Vec cannot fail");
                encoder.finish().expect("writing to a Vec cannot fail")
            }
            Compression::Snappy => xerial_compress(records),
            Compression::Lz4 => {
                let mut encoder =
                    lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(records.len() / 2 + 64));
                encoder
                    .write_all(records)
                    .expect("writing to a Vec cannot fail");
                encoder.finish().expect("writing to a Vec cannot fail")
            }
            Compression::Zstd => zstd::stream::encode_all(records, ZSTD_LEVEL)
                .expect("compressing from a slice into a Vec cannot fail"),
        }
    }

    /// Decompresses records, refusing output above `decompressed_bytes_max` bytes as soon as
    /// it passes the bound: the output never holds more. `None` copies them (under the same
    /// bound).
    pub fn decompress(
        self,
        compressed: &[u8],
        decompressed_bytes_max: usize,
    ) -> Result<Vec<u8>, DecompressError> {
        let codec = self.name();
        let too_large = || DecompressError::TooLarge {
            codec,
            max: decompressed_bytes_max,
        };
        let malformed = |reason: String| DecompressError::Malformed { codec, reason };
        match self {
            Compression::None => {
                if compressed.len() > decompressed_bytes_max {
                    return Err(too_large());
                }
                Ok(compressed.to_vec())
            }
            Compression::Gzip => read_bounded(
                flate2::read::MultiGzDecoder::new(compressed),
                decompressed_bytes_max,
                codec,
            ),
            Compression::Snappy => {
                if compressed.starts_with(&XERIAL_MAGIC) {
                    xerial_decompress(compressed, decompressed_bytes_max)
                } else {
                    let mut output = Vec::new();
                    snappy_block(compressed, &mut output, decompressed_bytes_max)?;
                    Ok(output)
                }
            }
            Compression::Lz4 => read_bounded(
                lz4_flex::frame::FrameDecoder::new(compressed),
                decompressed_bytes_max,
                codec,
            ),
            Compression::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
                    .map_err(|error| malformed(error.to_string()))?;
                // The window is memory the decoder holds besides the output: bound it by the
                // largest power of two within the output bound (a window larger than all the
                // output there may be serves no honest frame), but never below what streaming
                // encoders declare.
                let window_log = usize::BITS - 1 - decompressed_bytes_max.max(1).leading_zeros();
                decoder
                    .window_log_max(
                        window_log.clamp(ZSTD_WINDOW_LOG_FLOOR, ZSTD_WINDOW_LOG_CEILING),
                    )
                    .map_err(|error| malformed(error.to_string()))?;
                read_bounded(decoder, decompressed_bytes_max, codec)
            }
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(name: &str) -> Result<Compression, String> {
        Compression::ALL
            .into_iter()
            .find(|compression| compression.name() == name)
            .ok_or_else(|| {
                format!("unknown compression {name:?}: use none, gzip, snappy, lz4 or zstd")
            })
    }
}

/// Makes room for `additional` more bytes in `output`, growing its capacity geometrically (so
/// that a large output is not copied over and over) but never past `max`: the output of a
/// decoder never holds more than its bound. The caller has checked `len + additional <= max`.
fn reserve_within(output: &mut Vec<u8>, additional: usize, max: usize) {
    let needed = output.len() + additional;
    if needed <= output.capacity() {
        return;
    }
    let capacity = (output.capacity() * 2)
        .max(READ_STEP_BYTES)
        .max(needed)
        .min(max);
    output.reserve_exact(capacity - output.len());
}

/// Reads a decoder to its end, refusing once more than `max` bytes come out: its output
/// never holds more than `max` bytes, and one step of [`READ_STEP_BYTES`] is read past it
/// at most (into a scratch buffer) before the refusal.
fn read_bounded(
    mut decoder: impl Read,
    max: usize,
    codec: &'static str,
) -> Result<Vec<u8>, DecompressError> {
    let mut output = Vec::new();
    let mut step = vec![0u8; READ_STEP_BYTES];
    // Every turn either ends, fails, or moves at least one byte into `output`, which holds at
    // most `max`: at most `max + 1` turns (and the decoders' reads are bounded themselves).
    loop {
        let read = match decoder.read(&mut step) {
            Ok(0) => return Ok(output),
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(DecompressError::Malformed {
                    codec,
                    reason: error.to_string(),
                })
            }
        };
        if read > max - output.len() {
            return Err(DecompressError::TooLarge { codec, max });
        }
        reserve_within(&mut output, read, max);
        output.extend_from_slice(&step[..read]);
    }
}

/// Appends one raw snappy block's output, refusing it by its declared length before
/// allocating when `output` would pass `max`.
fn snappy_block(block: &[u8], output: &mut Vec<u8>, max: usize) -> Result<(), DecompressError> {
    let codec = Compression::Snappy.name();
    let length = snap::raw::decompress_len(block).map_err(|error| DecompressError::Malformed {
        codec,
        reason: error.to_string(),
    })?;
    if length > max - output.len().min(max) {
        return Err(DecompressError::TooLarge { codec, max });
    }
    reserve_within(output, length, max);
    let start = output.len();
    output.resize(start + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut output[start..])
        .map_err(|error| DecompressError::Malformed {
            codec,
            reason: error.to_string(),
        })?;
    if written != length {
        return Err(DecompressError::Malformed {
            codec,
            reason: format!("a block declares {length} bytes and holds {written}"),
        });
    }
    Ok(())
}

/// xerial's framing: the header, then blocks of (compressed length as a big-endian i32, raw
/// snappy block).
fn xerial_decompress(framed: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    let codec = Compression::Snappy.name();
    let malformed = |reason: &str| DecompressError::Malformed {
        codec,
        reason: reason.to_string(),
    };
    if framed.len() < XERIAL_HEADER_BYTES {
        return Err(malformed("xerial header is cut short"));
    }
    let mut rest = &framed[XERIAL_HEADER_BYTES..];
    let mut output = Vec::new();
    // Each block takes at least its 4-byte length: the loop ends within framed.len() / 4 turns.
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(malformed("xerial block length is cut short"));
        }
        let length = i32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        rest = &rest[4..];
        let Ok(length) = usize::try_from(length) else {
            return Err(malformed("xerial block length is negative"));
        };
        if length > rest.len() {
            return Err(malformed("xerial block is shorter than its length"));
        }
        let (block, after) = rest.split_at(length);
        snappy_block(block, &mut output, max)?;
        rest = after;
    }
    Ok(output)
}

fn xerial_compress(records: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(records.len() / 2 + XERIAL_HEADER_BYTES + 64);
    framed.extend_from_slice(&XERIAL_MAGIC);
    framed.extend_from_slice(&1i32.to_be_bytes());
    framed.extend_from_slice(&1i32.to_be_bytes());
    let mut encoder = snap::raw::Encoder::new();
    for chunk in records.chunks(XERIAL_BLOCK_BYTES) {
        let block = encoder
            .compress_vec(chunk)
            .expect("a chunk within snappy's block size compresses");
        framed.extend_from_slice(&(block.len() as i32).to_be_bytes());
        framed.extend_from_slice(&block);
    }
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 4] = [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn sample(bytes: usize) -> Vec<u8> {
        (0..bytes).map(|index| (index % 251) as u8 ^ 0x5a).collect()
    }

    #[test]
    fn every_codec_round_trips_empty_small_and_multi_block_input() {
        for codec in CODECS {
            for size in [0, 1, 1000, 100_000] {
                let plain = sample(size);
                let compressed = codec.compress(&plain);
                assert_eq!(
                    codec.decompress(&compressed, size).unwrap(),
                    plain,
                    "{codec} at {size} bytes"
                );
            }
        }
    }

    #[test]
    fn names_parse_back_and_codec_ids_are_kafkas() {
        for compression in Compression::ALL {
            assert_eq!(compression.name().parse(), Ok(compression));
            assert_eq!(
                Compression::from_codec(compression.codec()),
                Some(compression)
            );
        }
        assert_eq!(Compression::Zstd.codec(), 4);
        assert_eq!(Compression::from_codec(5), None);
        assert!("brotli".parse::<Compression>().is_err());
    }

    /// 64 MiB of zeros compress to a few KiB; with a 1 MiB bound each codec refuses them
    /// without inflating past the bound.
    #[test]
    fn a_decompression_bomb_is_refused_at_the_bound() {
        let zeros = vec![0u8; 64 * 1024 * 1024];
        for codec in CODECS {
            let bomb = codec.compress(&zeros);
            assert!(bomb.len() < 4 * 1024 * 1024, "{codec}: {}", bomb.len());
            assert_eq!(
                codec.decompress(&bomb, 1024 * 1024),
                Err(DecompressError::TooLarge {
                    codec: codec.name(),
                    max: 1024 * 1024
                }),
                "{codec}"
            );
            // One byte over the bound is refused; exactly the bound is not.
            let edge = codec.compress(&zeros[..4096]);
            assert!(codec.decompress(&edge, 4096).is_ok(), "{codec}");
            assert!(
                matches!(
                    codec.decompress(&edge, 4095),
                    Err(DecompressError::TooLarge { .. })
                ),
                "{codec}"
            );
        }
    }

    /// A raw snappy block declaring 1 GiB is refused by its declared length, before the
    /// output is allocated (the decoder never gets to run).
    #[test]
    fn a_snappy_block_declaring_more_than_the_bound_is_refused_before_allocating() {
        let mut block = Vec::new();
        // Varint 1 GiB, then nothing.
        let mut length = 1u64 << 30;
        while length >= 0x80 {
            block.push((length as u8) | 0x80);
            length >>= 7;
        }
        block.push(length as u8);
        assert!(matches!(
            Compression::Snappy.decompress(&block, DECOMPRESSED_BYTES_CEILING),
            Err(DecompressError::TooLarge { .. })
        ));
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        framed.extend_from_slice(&(block.len() as i32).to_be_bytes());
        framed.extend_from_slice(&block);
        assert!(matches!(
            Compression::Snappy.decompress(&framed, DECOMPRESSED_BYTES_CEILING),
            Err(DecompressError::TooLarge { .. })
        ));
    }

    #[test]
    fn raw_snappy_as_librdkafka_writes_it_is_read() {
        let plain = sample(10_000);
        let raw = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        assert_eq!(Compression::Snappy.decompress(&raw, 10_000).unwrap(), plain);
    }

    #[test]
    fn truncated_and_garbage_input_is_malformed_never_a_panic() {
        let plain = sample(50_000);
        for codec in CODECS {
            let compressed = codec.compress(&plain);
            for cut in [1, 5, 17, compressed.len() / 2] {
                assert!(
                    matches!(
                        codec.decompress(&compressed[..cut], 1 << 20),
                        Err(DecompressError::Malformed { .. })
                    ),
                    "{codec} cut at {cut}"
                );
            }
            // Without its last byte (a checksum or an end mark), the data is refused or comes
            // out whole (lz4_flex reads a frame cut inside its end mark as ended); never as
            // something else.
            match codec.decompress(&compressed[..compressed.len() - 1], 1 << 20) {
                Ok(output) => assert_eq!(output, plain, "{codec}"),
                Err(error) => assert!(
                    matches!(error, DecompressError::Malformed { .. }),
                    "{codec}: {error}"
                ),
            }
            for garbage in [
                &b""[..],
                b"\x00",
                b"not compressed at all, just text",
                &[0xff; 64],
            ] {
                // Empty input is an empty snappy block's error or an empty stream: either
                // way no panic; anything returned must be within the bound.
                if let Ok(output) = codec.decompress(garbage, 1 << 20) {
                    assert!(output.len() <= 1 << 20);
                }
            }
            let mut flipped = compressed.clone();
            let middle = flipped.len() / 2;
            flipped[middle] ^= 0xff;
            if let Ok(output) = codec.decompress(&flipped, 1 << 20) {
                assert!(output.len() <= 1 << 20);
            }
        }
        assert!(matches!(
            Compression::Snappy.decompress(&XERIAL_MAGIC, 1 << 20),
            Err(DecompressError::Malformed { .. })
        ));
        let mut negative = XERIAL_MAGIC.to_vec();
        negative.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            Compression::Snappy.decompress(&negative, 1 << 20),
            Err(DecompressError::Malformed { .. })
        ));
    }
}
