mod common;

use rand::{thread_rng, Rng};

use sled::*;

use sled::{
    pin, BatchManifest, Log, LogKind, LogRead, Lsn, PageId, SEG_HEADER_LEN,
};

const PID: PageId = 4;
const REPLACE: LogKind = LogKind::Replace;

#[test]
#[ignore = "adding 50 causes the flush to never return"]
fn log_writebatch() -> crate::Result<()> {
    common::setup_logger();
    let config = Config::new().temporary(true);
    let db = config.open()?;
    let log = &db.context.pagecache.log;

    let guard = pin();

    log.reserve(REPLACE, PID, &IVec::from(b"1"), &guard)?.complete()?;
    log.reserve(REPLACE, PID, &IVec::from(b"2"), &guard)?.complete()?;
    log.reserve(REPLACE, PID, &IVec::from(b"3"), &guard)?.complete()?;
    log.reserve(REPLACE, PID, &IVec::from(b"4"), &guard)?.complete()?;
    log.reserve(REPLACE, PID, &IVec::from(b"5"), &guard)?.complete()?;

    // simulate a torn batch by
    // writing an LSN higher than
    // is possible to recover into
    // a batch manifest before
    // some writes.
    let batch_res =
        log.reserve(REPLACE, PID, &BatchManifest::default(), &guard)?;
    log.reserve(REPLACE, PID, &IVec::from(b"6"), &guard)?.complete()?;
    log.reserve(REPLACE, PID, &IVec::from(b"7"), &guard)?.complete()?;
    log.reserve(REPLACE, PID, &IVec::from(b"8"), &guard)?.complete()?;
    let last_res = log.reserve(REPLACE, PID, &IVec::from(b"9"), &guard)?;
    let last_res_lsn = last_res.lsn();
    last_res.complete()?;
    batch_res.mark_writebatch(last_res_lsn + 50)?;
    log.reserve(REPLACE, PID, &IVec::from(b"10"), &guard)?.complete()?;

    let mut iter = log.iter_from(0);

    assert!(iter.next().is_some());
    assert!(iter.next().is_some());
    assert!(iter.next().is_some());
    assert!(iter.next().is_some());
    assert!(iter.next().is_some());
    assert_eq!(iter.next(), None);

    Ok(())
}

#[test]
fn more_log_reservations_than_buffers() -> Result<()> {
    let config = Config::new().temporary(true).segment_size(256);

    let db = config.open()?;
    let log = &db.context.pagecache.log;
    let mut reservations = vec![];

    let total_seg_overhead = SEG_HEADER_LEN;
    let big_msg_overhead = MAX_MSG_HEADER_LEN + total_seg_overhead;
    let big_msg_sz = config.segment_size - big_msg_overhead;

    for _ in 0..256 * 30 {
        let guard = pin();
        reservations.push(
            log.reserve(REPLACE, PID, &IVec::from(vec![0; big_msg_sz]), &guard)
                .unwrap(),
        )
    }
    for res in reservations.into_iter().rev() {
        // abort in reverse order
        res.abort()?;
    }

    log.flush()?;
    Ok(())
}

#[test]
fn non_contiguous_log_flush() -> Result<()> {
    let config = Config::new().temporary(true).segment_size(1024);

    let db = config.open()?;
    let log = &db.context.pagecache.log;

    let seg_overhead = SEG_HEADER_LEN;
    let buf_len = (config.segment_size / MINIMUM_ITEMS_PER_SEGMENT)
        - (MAX_MSG_HEADER_LEN + seg_overhead);

    let guard = pin();
    let res1 = log
        .reserve(REPLACE, PID, &IVec::from(vec![0; buf_len]), &guard)
        .unwrap();
    let res2 = log
        .reserve(REPLACE, PID, &IVec::from(vec![0; buf_len]), &guard)
        .unwrap();
    let lsn = res2.lsn();
    res2.abort()?;
    res1.abort()?;
    log.make_stable(lsn)?;
    Ok(())
}

#[test]
#[cfg(not(miri))] // can't create threads
fn concurrent_logging() -> Result<()> {
    use std::thread;

    common::setup_logger();
    for _ in 0..10 {
        let config = Config::new()
            .temporary(true)
            .flush_every_ms(Some(50))
            .segment_size(256);

        let db = config.open()?;

        let db2 = db.clone();
        let db3 = db.clone();
        let db4 = db.clone();
        let db5 = db.clone();
        let db6 = db.clone();

        let seg_overhead = SEG_HEADER_LEN;
        let buf_len = (config.segment_size / MINIMUM_ITEMS_PER_SEGMENT)
            - (MAX_MSG_HEADER_LEN + seg_overhead);

        let t1 = thread::Builder::new()
            .name("c1".to_string())
            .spawn(move || {
                let log = &db.context.pagecache.log;
                for i in 0..1_000 {
                    let buf = IVec::from(vec![1; i % buf_len]);
                    let guard = pin();
                    log.reserve(REPLACE, PID, &buf, &guard)
                        .unwrap()
                        .complete()
                        .unwrap();
                }
            })
            .unwrap();

        let t2 = thread::Builder::new()
            .name("c2".to_string())
            .spawn(move || {
                let log = &db2.context.pagecache.log;
                for i in 0..1_000 {
                    let buf = IVec::from(vec![2; i % buf_len]);
                    let guard = pin();
                    log.reserve(REPLACE, PID, &buf, &guard)
                        .unwrap()
                        .complete()
                        .unwrap();
                }
            })
            .unwrap();

        let t3 = thread::Builder::new()
            .name("c3".to_string())
            .spawn(move || {
                let log = &db3.context.pagecache.log;
                for i in 0..1_000 {
                    let buf = IVec::from(vec![3; i % buf_len]);
                    let guard = pin();
                    log.reserve(REPLACE, PID, &buf, &guard)
                        .unwrap()
                        .complete()
                        .unwrap();
                }
            })
            .unwrap();

        let t4 = thread::Builder::new()
            .name("c4".to_string())
            .spawn(move || {
                let log = &db4.context.pagecache.log;
                for i in 0..1_000 {
                    let buf = IVec::from(vec![4; i % buf_len]);
                    let guard = pin();
                    log.reserve(REPLACE, PID, &buf, &guard)
                        .unwrap()
                        .complete()
                        .unwrap();
                }
            })
            .unwrap();
        let t5 = thread::Builder::new()
            .name("c5".to_string())
            .spawn(move || {
                let log = &db5.context.pagecache.log;
                for i in 0..1_000 {
                    let guard = pin();
                    let buf = IVec::from(vec![5; i % buf_len]);
                    log.reserve(REPLACE, PID, &buf, &guard)
                        .unwrap()
                        .complete()
                        .unwrap();
                }
            })
            .unwrap();

        let t6 = thread::Builder::new()
            .name("c6".to_string())
            .spawn(move || {
                let log = &db6.context.pagecache.log;
                for i in 0..1_000 {
                    let buf = IVec::from(vec![6; i % buf_len]);
                    let guard = pin();
                    let (lsn, _lid) = log
                        .reserve(REPLACE, PID, &buf, &guard)
                        .unwrap()
                        .complete()
                        .unwrap();
                    log.make_stable(lsn).unwrap();
                }
            })
            .unwrap();

        t6.join().unwrap();
        t5.join().unwrap();
        t4.join().unwrap();
        t3.join().unwrap();
        t2.join().unwrap();
        t1.join().unwrap();
    }

    Ok(())
}

fn write(log: &Log) {
    let data_bytes = IVec::from(b"yoyoyoyo");
    let guard = pin();
    let (lsn, ptr) = log
        .reserve(REPLACE, PID, &data_bytes, &guard)
        .unwrap()
        .complete()
        .unwrap();
    let read_buf = log.read(PID, lsn, ptr).unwrap().into_data().unwrap();
    assert_eq!(
        *read_buf,
        *data_bytes.serialize(),
        "after writing data, it should be readable"
    );
}

fn abort(log: &Log) {
    let guard = pin();
    let res = log.reserve(REPLACE, PID, &IVec::from(&[0; 5]), &guard).unwrap();
    let (lsn, ptr) = res.abort().unwrap();
    match log.read(PID, lsn, ptr) {
        Ok(LogRead::Canceled(_)) => {}
        other => {
            panic!(
                "expected to successfully read \
                 aborted log message, instead read {:?}",
                other
            );
        }
    }
}

#[test]
fn log_aborts() {
    let config = Config::new().temporary(true);
    let db = config.open().unwrap();
    let log = &db.context.pagecache.log;
    write(&log);
    abort(&log);
    write(&log);
    abort(&log);
    write(&log);
    abort(&log);
}

#[test]
#[cfg_attr(any(target_os = "fuchsia", miri), ignore)]
fn log_chunky_iterator() {
    common::setup_logger();
    let config =
        Config::new().flush_every_ms(None).temporary(true).segment_size(256);

    let db = config.open().unwrap();
    let log = &db.context.pagecache.log;

    let mut reference = vec![];

    let max_valid_size =
        config.segment_size - (MAX_MSG_HEADER_LEN + SEG_HEADER_LEN);

    for i in PID..1000 {
        let len = thread_rng().gen_range(0, max_valid_size * 2);
        let item = thread_rng().gen::<u8>();
        let buf = IVec::from(vec![item; len]);
        let abort = thread_rng().gen::<bool>();

        let pid = 10000 + i;

        let guard = pin();

        if abort {
            let res = log
                .reserve(REPLACE, pid, &buf, &guard)
                .expect("should be able to reserve");
            res.abort().unwrap();
        } else {
            let res = log
                .reserve(REPLACE, pid, &buf, &guard)
                .expect("should be able to write reservation");
            let ptr = res.pointer();
            let (lsn, _) = res.complete().unwrap();
            reference.push((REPLACE, pid, lsn, ptr));
        }
    }

    for (_, pid, lsn, ptr) in reference.into_iter() {
        assert!(log.read(pid, lsn, ptr).is_ok());
    }
}

#[test]
fn multi_segment_log_iteration() -> Result<()> {
    common::setup_logger();
    // ensure segments are being linked
    // ensure trailers are valid
    let config = Config::new().temporary(true).segment_size(512);

    let total_seg_overhead = SEG_HEADER_LEN;
    let big_msg_overhead = MAX_MSG_HEADER_LEN + total_seg_overhead;
    let big_msg_sz = (config.segment_size - big_msg_overhead) / 64;

    let db = config.open().unwrap();
    let log = &db.context.pagecache.log;

    for i in 0..48 {
        let buf = IVec::from(vec![i as u8; big_msg_sz * i]);
        let guard = pin();
        log.reserve(REPLACE, i as PageId, &buf, &guard)
            .unwrap()
            .complete()
            .unwrap();
    }
    log.flush()?;

    // start iterating just past the first segment header
    let mut iter = log.iter_from(SEG_HEADER_LEN as Lsn);

    for _ in 0..48 {
        iter.next().expect("expected to read another message");
    }

    Ok(())
}

/// Cairn patch (PATCHES.md, "Power-loss durability"): with `power_loss_durable`, a flush that
/// returned has `fdatasync`ed every blob file written before it (none is left unsynced), the
/// blobs directory and the log file; without it nothing is synced that way.
#[test]
fn power_loss_durable_flushes_sync_blobs_their_directory_and_the_log() -> Result<()> {
    for durable in [true, false] {
        let path = std::env::temp_dir().join(format!(
            "sled-power-loss-durable-{}-{}",
            std::process::id(),
            durable
        ));
        let _ = std::fs::remove_dir_all(&path);
        {
            let db = Config::new()
                .path(&path)
                .flush_every_ms(None)
                .power_loss_durable(durable)
                .open()?;
            for key in 0..4_u8 {
                let before = sled::durability_counters(&path);
                // A value over a quarter segment (128 KiB) makes its leaf a blob file.
                db.insert([key], vec![key; 200 * 1024])?;
                db.flush()?;
                let after = sled::durability_counters(&path);
                if durable {
                    assert_eq!(after.unsynced_blobs, 0, "{:?}", after);
                    assert!(
                        after.blobs_synced_through >= after.blobs_written,
                        "{:?}",
                        after
                    );
                    assert!(after.blobs_written > before.blobs_written, "{:?}", after);
                    assert!(after.blob_syncs > before.blob_syncs, "{:?}", after);
                    assert!(
                        after.directory_syncs > before.directory_syncs,
                        "{:?}",
                        after
                    );
                    assert!(after.log_syncs > before.log_syncs, "{:?}", after);
                } else {
                    assert_eq!(after, sled::DurabilityCounters::default());
                }
            }
            let blob_files = std::fs::read_dir(path.join("blobs"))?.count();
            assert!(blob_files > 0, "no value was written as a blob");
        }
        let db = Config::new().path(&path).flush_every_ms(None).open()?;
        for key in 0..4_u8 {
            assert_eq!(db.get([key])?, Some(IVec::from(vec![key; 200 * 1024])));
        }
        drop(db);
        std::fs::remove_dir_all(&path)?;
    }
    Ok(())
}

/// Cairn patch (PATCHES.md, "Writeback hints off the writing thread"): with
/// `flush_to_kernel` and `drop_written_pages`, the log's and the blobs' writeback starts and
/// page drops are queued for the `sled-writeback` thread, which carries them out; the
/// writing thread never makes those calls itself, and the values read back.
#[test]
fn writeback_hints_are_carried_out_by_the_writeback_thread() -> Result<()> {
    let path = std::env::temp_dir()
        .join(format!("sled-writeback-hints-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    let before = sled::writeback_hint_counters();
    {
        let db = Config::new()
            .path(&path)
            .flush_every_ms(None)
            .flush_to_kernel(true)
            .drop_written_pages(true)
            .open()?;
        // 4 MiB in 64 KiB values, flushed as they go: several 1 MiB log ranges to write back.
        for key in 0..64_u8 {
            db.insert([key], vec![key; 64 * 1024])?;
            db.flush()?;
        }
        let queued = sled::writeback_hint_counters().queued;
        assert!(queued > before.queued, "no hint was queued");
        assert!(
            sled::wait_for_writeback_hints(std::time::Duration::from_secs(20)),
            "hints not carried out: {:?}",
            sled::writeback_hint_counters()
        );
        assert!(sled::writeback_hint_counters().done >= queued);
    }
    let db = Config::new().path(&path).flush_every_ms(None).open()?;
    for key in 0..64_u8 {
        assert_eq!(db.get([key])?, Some(IVec::from(vec![key; 64 * 1024])));
    }
    drop(db);
    std::fs::remove_dir_all(&path)?;
    Ok(())
}

/// Cairn patch (PATCHES.md, "A flush hands its writes to the kernel"): with
/// `flush_to_kernel`, what a returned flush covers survives the process dying at once
/// (`abort`: no destructor, no further write), small values in the log and a large one in a
/// blob file alike, because the flush wrote it to the kernel before returning.
#[test]
fn flush_to_kernel_flushes_survive_an_abort_of_the_process() -> Result<()> {
    const CHILD: &str = "SLED_FLUSH_TO_KERNEL_CHILD";
    let value = |key: u8| vec![key; if key == 0 { 200 * 1024 } else { 1000 }];
    if let Some(path) = std::env::var_os(CHILD) {
        let db = Config::new()
            .path(path)
            .flush_every_ms(None)
            .flush_to_kernel(true)
            .open()?;
        for key in 0..64_u8 {
            db.insert([key], value(key))?;
        }
        db.flush()?;
        std::process::abort();
    }
    let path = std::env::temp_dir()
        .join(format!("sled-flush-to-kernel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    let status = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "flush_to_kernel_flushes_survive_an_abort_of_the_process",
            "--test-threads=1",
        ])
        .env(CHILD, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    assert!(!status.success(), "the child should have aborted: {:?}", status);
    let db = Config::new().path(&path).flush_every_ms(None).open()?;
    for key in 0..64_u8 {
        assert_eq!(db.get([key])?, Some(IVec::from(value(key))), "key {}", key);
    }
    assert!(
        std::fs::read_dir(path.join("blobs"))?.count() > 0,
        "no value was written as a blob"
    );
    drop(db);
    std::fs::remove_dir_all(&path)?;
    Ok(())
}

/// How many of a file's pages are in the kernel's page cache (`mincore` over a mapping).
#[cfg(target_os = "linux")]
fn cached_pages(path: &std::path::Path) -> usize {
    use std::os::unix::io::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else { return 0 };
    let len = file.metadata().unwrap().len() as usize;
    if len == 0 {
        return 0;
    }
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut resident = vec![0_u8; (len + page - 1) / page];
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "{}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::mincore(addr, len, resident.as_mut_ptr()), 0);
        libc::munmap(addr, len);
    }
    resident.iter().filter(|flags| **flags & 1 == 1).count()
}

/// Cairn patch (PATCHES.md, "Written pages leave the page cache"): with `drop_written_pages`,
/// the log's pages leave the page cache 5 s after their write was synced, a blob's once it is
/// synced (`power_loss_durable`) or written back (otherwise), and a blob read back leaves none.
/// Without the option they stay, as upstream left them.
#[cfg(target_os = "linux")]
#[test]
fn written_pages_leave_the_page_cache() -> Result<()> {
    // The third: `flush_to_kernel`, whose writeback starts in batches ("A flush hands its
    // writes to the kernel").
    for (durable, drop_pages, to_kernel) in
        [(true, true, false), (false, true, false), (false, true, true), (true, false, false)]
    {
        let path = std::env::temp_dir().join(format!(
            "sled-drop-written-pages-{}-{}-{}-{}",
            std::process::id(),
            durable,
            drop_pages,
            to_kernel
        ));
        let _ = std::fs::remove_dir_all(&path);
        let config = Config::new()
            .path(&path)
            .flush_every_ms(None)
            .power_loss_durable(durable)
            .flush_to_kernel(to_kernel)
            .drop_written_pages(drop_pages);
        let cached_blob_pages = |paths: &[std::path::PathBuf]| -> usize {
            paths.iter().map(|blob| cached_pages(blob)).sum()
        };
        let first_blobs: Vec<std::path::PathBuf>;
        {
            let db = config.open()?;
            let small = db.open_tree("small")?;
            for key in 0..16_u8 {
                // Over a quarter segment (128 KiB): its leaf is a blob file.
                db.insert([key], vec![key; 200 * 1024])?;
                for n in 0..64_u8 {
                    small.insert([key, n], vec![n; 256])?;
                }
                db.flush()?;
            }
            first_blobs = std::fs::read_dir(path.join("blobs"))?
                .map(|entry| entry.map(|entry| entry.path()))
                .collect::<std::io::Result<_>>()?;
            assert!(!first_blobs.is_empty(), "no value was written as a blob");
            if durable && drop_pages {
                // A synced blob leaves the page cache at once.
                assert_eq!(cached_blob_pages(&first_blobs), 0, "synced blob pages cached");
            }
            // Otherwise a blob's writeback starts when a blob written later finds it 2 s
            // old, and its pages are dropped when one written later finds that 2 s old.
            // A log write's pages are dropped by the first log write 5 s after it.
            for (key, wait_ms) in [(100_u8, 2_100), (101, 3_100)] {
                std::thread::sleep(std::time::Duration::from_millis(wait_ms));
                db.insert([key], vec![key; 200 * 1024])?;
                db.flush()?;
            }
            // The drops are hints for the `sled-writeback` thread ("Writeback hints off
            // the writing thread").
            assert!(sled::wait_for_writeback_hints(std::time::Duration::from_secs(20)));
            let log_pages = cached_pages(&path.join("db"));
            if drop_pages {
                // What the last two (small) log writes wrote stays, for now.
                assert!(log_pages <= 8, "{} log pages cached", log_pages);
            } else {
                assert!(log_pages > 32, "only {} log pages cached", log_pages);
            }
            let blob_pages = cached_blob_pages(&first_blobs);
            if drop_pages {
                assert_eq!(blob_pages, 0, "blob pages cached");
            } else {
                assert!(blob_pages > 0, "no blob page cached");
            }
        }
        let db = config.open()?;
        for key in 0..16_u8 {
            assert_eq!(db.get([key])?, Some(IVec::from(vec![key; 200 * 1024])));
        }
        let blobs: Vec<std::path::PathBuf> =
            std::fs::read_dir(path.join("blobs"))?
                .map(|entry| entry.map(|entry| entry.path()))
                .collect::<std::io::Result<_>>()?;
        let blob_pages = cached_blob_pages(&blobs);
        if drop_pages {
            assert_eq!(
                blob_pages, 0,
                "blob pages cached after reading them back"
            );
        } else {
            assert!(
                blob_pages > 0,
                "no blob page cached after reading them back"
            );
        }
        drop(db);
        std::fs::remove_dir_all(&path)?;
    }
    Ok(())
}

/// Writes that leave segments to clean (pages that never change once written, in segments
/// that the churn's replaced versions then turn mostly into garbage), then waits until the
/// `sled-cleaner` thread, if any, has been idle for a while. Returns the pages cleaned inside
/// writes and apart from them, and the log file's size; checks that every value reads back
/// after reopening.
fn fill_segments_to_clean(
    background: bool,
    backlog: usize,
) -> Result<((u64, u64), u64)> {
    let path = std::env::temp_dir().join(format!(
        "sled-background-cleaning-{}-{}-{}",
        std::process::id(),
        background,
        backlog
    ));
    let _ = std::fs::remove_dir_all(&path);
    let config = Config::new()
        .path(&path)
        .flush_every_ms(None)
        .segment_size(256 * 1024)
        .background_segment_cleaning(background)
        .segment_cleaning_backlog(backlog);
    let outcome = {
        let db = config.open()?;
        let stable = db.open_tree("stable")?;
        let churn = db.open_tree("churn")?;
        for round in 0..1600_u32 {
            stable.insert(round.to_be_bytes(), vec![round as u8; 1024])?;
            for key in 0..16_u8 {
                churn.insert([key], vec![round as u8; 4 * 1024])?;
            }
            db.flush()?;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // Until the cleaner thread has been idle (its counter unchanged) for a while.
        let mut last = db.context.pagecache.segment_cleaning_counters();
        let counters = loop {
            if !background || std::time::Instant::now() > deadline {
                break last;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = db.context.pagecache.segment_cleaning_counters();
            if now.1 > 0 && now == last {
                break now;
            }
            last = now;
        };
        db.flush()?;
        (counters, std::fs::metadata(path.join("db"))?.len())
    };
    let db = config.open()?;
    let stable = db.open_tree("stable")?;
    let churn = db.open_tree("churn")?;
    for round in 0..1600_u32 {
        assert_eq!(
            stable.get(round.to_be_bytes())?,
            Some(IVec::from(vec![round as u8; 1024]))
        );
    }
    for key in 0..16_u8 {
        assert_eq!(churn.get([key])?, Some(IVec::from(vec![1599_u32 as u8; 4 * 1024])));
    }
    drop((stable, churn, db));
    std::fs::remove_dir_all(&path)?;
    Ok(outcome)
}

/// Cairn patch (PATCHES.md, "Segment cleaning off the append path"): with
/// `background_segment_cleaning` and no backlog limit, no write rewrites a page for the segment
/// cleaner; the `sled-cleaner` thread does. Without the option, writes do all of it.
#[test]
fn segment_cleaning_happens_off_the_append_path() -> Result<()> {
    let ((inline, apart), _) = fill_segments_to_clean(true, usize::MAX)?;
    assert_eq!(inline, 0, "a write cleaned a segment");
    assert!(apart > 0, "the cleaner thread cleaned nothing");
    let ((inline, apart), _) = fill_segments_to_clean(false, usize::MAX)?;
    assert!(inline > 0, "the writes cleaned nothing");
    assert_eq!(apart, 0);
    Ok(())
}

/// Cairn patch (PATCHES.md, "Segment cleaning off the append path"): a cleaner thread that
/// falls behind (starved of CPU, as on a busy machine) is bounded by
/// `segment_cleaning_backlog`: from that many segments waiting, writes clean again, so the log
/// file grows no more than by about that many segments beyond its size with upstream's inline
/// cleaning.
#[test]
fn a_cleaner_that_falls_behind_is_caught_up_by_the_writes() -> Result<()> {
    const BACKLOG: usize = 4;
    let (_, with_thread) = fill_segments_to_clean(true, BACKLOG)?;
    let (_, inline) = fill_segments_to_clean(false, BACKLOG)?;
    // The inline runs themselves vary by about 2 MiB (8 segments) from run to run.
    let slack = (BACKLOG as u64 + 12) * 256 * 1024;
    assert!(
        with_thread <= inline + slack,
        "log file {} bytes with background cleaning, {} with inline cleaning",
        with_thread,
        inline
    );
    Ok(())
}

/// Cairn patch (PATCHES.md, "Blob releases in the background"): blob files whose pages were
/// replaced are released by the background releaser, not by the writer; by the time the
/// database is dropped every release it queued is done (each released file is empty, in
/// `blobs-free/`, or gone), and the newest values read back after reopening.
#[test]
fn replaced_blobs_are_released_in_the_background_and_drained_on_close() -> Result<()> {
    let path = std::env::temp_dir()
        .join(format!("sled-blob-release-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    let before = sled::blob_release_counters(&path);
    {
        let db = Config::new()
            .path(&path)
            .flush_every_ms(None)
            .segment_size(256 * 1024)
            .open()?;
        // Values over a quarter segment make their leaves blobs; rewriting them over many
        // segments makes sled release the replaced ones. The filler's small values live in
        // the log itself and roll its segments (a blob is released when the segment holding
        // its replacement is deactivated).
        let filler = db.open_tree("filler")?;
        for round in 0..64_u32 {
            for key in 0..16_u8 {
                let mut value = vec![key; 2 * 1024];
                value[..4].copy_from_slice(&round.to_be_bytes());
                filler.insert([key], value)?;
            }
            for key in 0..4_u8 {
                let mut value = vec![key; 100 * 1024];
                value[..4].copy_from_slice(&round.to_be_bytes());
                db.insert([key], value)?;
            }
            db.flush()?;
        }
    }
    let after = sled::blob_release_counters(&path);
    assert_eq!(after.pending, 0, "{:?}", after);
    assert!(after.in_background > before.in_background, "{:?} then {:?}", before, after);
    for entry in std::fs::read_dir(path.join("blobs-free"))? {
        let len = entry?.metadata()?.len();
        assert_eq!(len, 0, "a released blob file kept its content");
    }
    let db = Config::new()
        .path(&path)
        .flush_every_ms(None)
        .segment_size(256 * 1024)
        .open()?;
    for key in 0..4_u8 {
        let value = db.get([key])?.expect("a value written before the drop");
        assert_eq!(&value[..4], &63_u32.to_be_bytes());
        assert!(value[4..].iter().all(|byte| *byte == key));
    }
    drop(db);
    std::fs::remove_dir_all(&path)?;
    Ok(())
}

/// Cairn patch (PATCHES.md, "Recycled blob files"): the background thread keeps spare empty
/// files in `blobs-free/`, and a new blob with no rested released file to take takes a spare
/// by a rename, so its inode was allocated off the writer's thread. After reopening, the spares
/// are gone and the values read back.
#[cfg(unix)]
#[test]
fn new_blobs_take_spare_files_created_in_the_background() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let path = std::env::temp_dir()
        .join(format!("sled-blob-spares-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    let config =
        Config::new().path(&path).flush_every_ms(None).segment_size(256 * 1024);
    let inodes = |dir: &str| -> std::collections::HashSet<u64> {
        std::fs::read_dir(path.join(dir))
            .map(|entries| {
                entries.map(|entry| entry.unwrap().metadata().unwrap().ino()).collect()
            })
            .unwrap_or_default()
    };
    {
        let db = config.open()?;
        // Over a quarter segment (64 KiB): each leaf is a blob file.
        for key in 0..4_u8 {
            db.open_tree([key])?.insert([0], vec![key; 100 * 1024])?;
        }
        db.flush()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // Until the restock is over: one still running would add newer spares, taken
        // first, after the snapshot below.
        while inodes("blobs-free").len() < 16 || sled::spare_blobs_restocking(&path) {
            assert!(std::time::Instant::now() < deadline, "no spare files were created");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let spares = inodes("blobs-free");
        let blobs_before = inodes("blobs");
        for key in 4..12_u8 {
            db.open_tree([key])?.insert([0], vec![key; 100 * 1024])?;
        }
        db.flush()?;
        let new_blobs: Vec<u64> =
            inodes("blobs").difference(&blobs_before).copied().collect();
        assert!(new_blobs.len() >= 8, "{} new blob files", new_blobs.len());
        let from_spares = new_blobs.iter().filter(|ino| spares.contains(ino)).count();
        assert!(
            from_spares >= 8,
            "{} of {} new blob files were spares",
            from_spares,
            new_blobs.len()
        );
        for entry in std::fs::read_dir(path.join("blobs-free"))? {
            assert_eq!(entry?.metadata()?.len(), 0, "a spare file has content");
        }
    }
    let db = config.open()?;
    assert!(
        inodes("blobs-free").len() < 16,
        "the spares of the earlier open were not removed"
    );
    for key in 0..12_u8 {
        let value = db.open_tree([key])?.get([0])?.expect("a value written before");
        assert!(value.len() == 100 * 1024 && value.iter().all(|byte| *byte == key));
    }
    drop(db);
    let _ = std::fs::remove_dir_all(&path);
    Ok(())
}

/// Cairn patch (PATCHES.md, "An existing database keeps its segment size"): a database made
/// with 512 KiB segments opens with a config asking for 2 MiB ones, keeps its data and goes
/// on with 512 KiB segments, so a value over their blob threshold (128 KiB) still becomes a
/// blob; a new database takes the size asked for.
#[test]
fn an_existing_database_keeps_its_segment_size() -> Result<()> {
    const OLD: usize = 512 * 1024;
    const NEW: usize = 2 * 1024 * 1024;
    let large = vec![7_u8; 200 * 1024];
    let blobs = |path: &std::path::Path| -> usize {
        std::fs::read_dir(path.join("blobs")).map(|dir| dir.count()).unwrap_or(0)
    };
    let base = std::env::temp_dir()
        .join(format!("sled-keeps-segment-size-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (existing, fresh) = (base.join("existing"), base.join("fresh"));
    let open = |path: &std::path::Path, segment_size: usize| {
        Config::new()
            .path(path)
            .segment_size(segment_size)
            .flush_every_ms(None)
            .open()
    };

    let db = open(&existing, OLD)?;
    db.insert(b"small", b"value".to_vec())?;
    db.flush()?;
    drop(db);

    let db = open(&existing, NEW)?;
    assert_eq!(db.get(b"small")?, Some(IVec::from(b"value".to_vec())));
    db.insert(b"large", large.clone())?;
    db.flush()?;
    assert!(blobs(&existing) > 0, "the value was not a blob: the segments were not 512 KiB");
    drop(db);
    let db = open(&existing, OLD)?;
    assert_eq!(db.get(b"large")?, Some(IVec::from(large.clone())));
    drop(db);

    let db = open(&fresh, NEW)?;
    db.insert(b"large", large.clone())?;
    db.flush()?;
    assert_eq!(blobs(&fresh), 0, "a new database did not take 2 MiB segments");
    drop(db);
    std::fs::remove_dir_all(&base)?;
    Ok(())
}
