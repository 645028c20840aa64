//! Loopback ports to fix before a process binds them: a cluster's seeds must be known
//! before any of its nodes starts, so its ports are chosen up front and bound later.
//!
//! A port found by binding port 0 and letting go comes from the kernel's ephemeral range,
//! the same range every outgoing connection and every other `bind(0)` draws from, so
//! between the choice and the node's bind another socket can take it ("Address already in
//! use"). [`reserve`] hands out ports *outside* that range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), which the kernel never assigns on its own,
//! from a per-process cursor that starts at an offset derived from the process id (so
//! concurrent test binaries and benches start far apart) and never hands a port out twice
//! in one process. Each port is checked free for TCP and UDP (gossip shares the peer port)
//! before it is returned.

use std::net::{TcpListener, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

/// The kernel's default ephemeral range, used when `/proc` cannot be read.
const DEFAULT_EPHEMERAL: (u16, u16) = (32_768, 60_999);
/// Ports below this are left to well-known and registered services.
const LOWEST: u16 = 10_000;
/// How far apart two processes' cursors start: room for this many ports each.
const PROCESS_STRIDE: u32 = 64;

/// The next candidate, counted from the start of the range; shared by the whole process.
static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);

/// `count` consecutive loopback ports, free for TCP and UDP when checked, outside the
/// ephemeral range and not handed out before by this process. Returns the first.
pub fn reserve(count: u16) -> Result<u16, String> {
    let range = fixed_range(ephemeral_range());
    let span = u32::from(range.end - range.start);
    let count32 = u32::from(count.max(1));
    if count32 > span {
        return Err(format!(
            "{count} consecutive ports do not fit in {}..{}",
            range.start, range.end
        ));
    }
    let start = (std::process::id().wrapping_mul(PROCESS_STRIDE)) % span;
    // The first caller sets the cursor; a lost race only means the other start is used.
    let _ = CURSOR.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    // Every candidate in the range is tried at most once before giving up.
    for _ in 0..span.div_ceil(count32) {
        let offset = CURSOR.fetch_add(count32, Ordering::Relaxed) % span;
        if offset + count32 > span {
            continue;
        }
        let first = range.start + offset as u16;
        if (first..first + count).all(free_for_tcp_and_udp) {
            return Ok(first);
        }
    }
    Err(format!(
        "no {count} consecutive free ports on 127.0.0.1 in {}..{}",
        range.start, range.end
    ))
}

/// `count` loopback ports, each as [`reserve`] hands them out (not necessarily consecutive).
pub fn reserve_each(count: usize) -> Result<Vec<u16>, String> {
    (0..count).map(|_| reserve(1)).collect()
}

fn free_for_tcp_and_udp(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// The kernel's ephemeral port range, inclusive.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_range(&text))
        .unwrap_or(DEFAULT_EPHEMERAL)
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let low = fields.next()?.ok()?;
    let high = fields.next()?.ok()?;
    (low <= high).then_some((low, high))
}

/// The larger stretch of ports outside `ephemeral` (inclusive) and at or above [`LOWEST`].
fn fixed_range((low, high): (u16, u16)) -> Range<u16> {
    let below = LOWEST..low.max(LOWEST);
    let above = high.saturating_add(1).max(LOWEST)..u16::MAX;
    if below.len() >= above.len() {
        below
    } else {
        above
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_range_avoids_the_ephemeral_range() {
        assert_eq!(fixed_range((32_768, 60_999)), 10_000..32_768);
        assert_eq!(fixed_range((1_024, 40_000)), 40_001..65_535);
        assert_eq!(fixed_range((1_024, 65_535)), 10_000..10_000);
        assert_eq!(parse_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_range("9 3"), None);
        assert_eq!(parse_range("x"), None);
    }

    #[test]
    fn reserved_ports_are_outside_the_ephemeral_range_and_never_repeat() {
        let (low, high) = ephemeral_range();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let first = reserve(3).expect("free ports");
            for port in first..first + 3 {
                assert!(!(low..=high).contains(&port), "{port} is ephemeral");
                assert!(seen.insert(port), "{port} handed out twice");
            }
        }
        for port in reserve_each(20).expect("free ports") {
            assert!(seen.insert(port), "{port} handed out twice");
        }
    }
}
