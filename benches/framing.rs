//! Framing micro-benchmark: messages per second through `FrameScanner`, alone and in the
//! proxy's server-to-client forwarding loop, and allocations per forwarded DataRow.
//!
//! The stream is what a `SELECT` of 10,000 pgbench_accounts-like rows looks like on the
//! wire: RowDescription, 10,000 DataRows (an int and an 84-byte filler), CommandComplete and
//! ReadyForQuery. It is fed in 8 KiB chunks, as socket reads would deliver it, so messages
//! straddle chunk boundaries. The `inspect` predicate is the proxy's: only ReadyForQuery,
//! CommandComplete, ErrorResponse and ParameterStatus are looked at whole; DataRows stream
//! through.
//!
//! A counting global allocator reports allocations per forwarded DataRow (target: 0) before
//! criterion runs. Run: `cargo bench --bench framing`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, BytesMut};
use criterion::{Criterion, Throughput};
use pgtenant::protocol::backend::{self, Backend};
use pgtenant::protocol::{btag, FrameScanner, Scanned};

/// Counts every allocation and reallocation; frees are not counted.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const ROWS: usize = 10_000;
const CHUNK: usize = 8 * 1024;
/// The proxy's cap on inspected messages (any value above the largest inspected one).
const MAX_MESSAGE: usize = 1 << 20;

fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

/// RowDescription + `ROWS` DataRows + CommandComplete + ReadyForQuery.
fn result_stream() -> Vec<u8> {
    let mut out = Vec::new();
    let mut desc = Vec::new();
    desc.extend_from_slice(&2i16.to_be_bytes());
    for (name, oid) in [("aid", 23i32), ("filler", 1042)] {
        desc.extend_from_slice(name.as_bytes());
        desc.push(0);
        desc.extend_from_slice(&[0; 6]); // table oid, column number
        desc.extend_from_slice(&oid.to_be_bytes());
        desc.extend_from_slice(&[0, 4, 0, 0, 0, 0, 0, 0]); // size, modifier, format
    }
    message(&mut out, btag::ROW_DESCRIPTION, &desc);
    let filler = [b' '; 84];
    for i in 0..ROWS {
        let aid = (i + 1).to_string();
        let mut row = Vec::new();
        row.extend_from_slice(&2i16.to_be_bytes());
        row.extend_from_slice(&(aid.len() as i32).to_be_bytes());
        row.extend_from_slice(aid.as_bytes());
        row.extend_from_slice(&(filler.len() as i32).to_be_bytes());
        row.extend_from_slice(&filler);
        message(&mut out, btag::DATA_ROW, &row);
    }
    message(&mut out, btag::COMMAND_COMPLETE, b"SELECT 10000\0");
    message(&mut out, btag::READY_FOR_QUERY, b"I");
    out
}

/// The proxy's server-side predicate (see `session::linked::server_to_client`).
fn inspect(tag: u8) -> bool {
    matches!(
        tag,
        btag::READY_FOR_QUERY
            | btag::COMMAND_COMPLETE
            | btag::ERROR_RESPONSE
            | btag::PARAMETER_STATUS
    )
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    messages: u64,
    data_rows: u64,
    ready: u64,
    bytes_out: u64,
}

/// The splitter alone: scans `stream` as if it arrived in `CHUNK`-sized reads.
fn scan_only(stream: &[u8]) -> Counts {
    let mut scanner = FrameScanner::new(MAX_MESSAGE);
    let mut counts = Counts::default();
    let (mut start, mut avail) = (0, 0);
    loop {
        match scanner
            .scan(&stream[start..avail], inspect)
            .expect("valid stream")
        {
            Some(Scanned::Through { len, start: first }) => {
                if first == Some(btag::DATA_ROW) {
                    counts.data_rows += 1;
                }
                counts.messages += u64::from(first.is_some());
                start += len;
            }
            Some(Scanned::Message { len, .. }) => {
                counts.messages += 1;
                start += len;
            }
            None if avail == stream.len() => return counts,
            None => avail = (avail + CHUNK).min(stream.len()),
        }
    }
}

/// The forwarding loop as `server_to_client` runs it: read into a `BytesMut`, scan, decode
/// what is inspected, write the run of scanned bytes out, advance.
struct Forwarder {
    scanner: FrameScanner,
    rbuf: BytesMut,
    /// Stands in for the client socket: written slices are copied here, as `write` would
    /// copy them into the kernel.
    sink: Vec<u8>,
}

impl Forwarder {
    fn new() -> Self {
        Forwarder {
            scanner: FrameScanner::new(MAX_MESSAGE),
            rbuf: BytesMut::new(),
            sink: Vec::with_capacity(64 * 1024),
        }
    }

    fn forward(&mut self, stream: &[u8]) -> Counts {
        let mut counts = Counts::default();
        for chunk in stream.chunks(CHUNK) {
            // session::linked::reserve
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            self.rbuf.extend_from_slice(chunk);
            let mut off = 0;
            while let Some(item) = self
                .scanner
                .scan(&self.rbuf[off..], inspect)
                .expect("valid stream")
            {
                match item {
                    Scanned::Through { len, start } => {
                        if start == Some(btag::DATA_ROW) {
                            counts.data_rows += 1;
                        }
                        counts.messages += u64::from(start.is_some());
                        off += len;
                    }
                    Scanned::Message { len, .. } => {
                        let msg = &self.rbuf[off..off + len];
                        if let Ok(Backend::ReadyForQuery(_)) = backend::decode(msg) {
                            counts.ready += 1;
                        }
                        counts.messages += 1;
                        off += len;
                    }
                }
            }
            if off > 0 {
                self.sink.clear();
                self.sink.extend_from_slice(&self.rbuf[..off]);
                black_box(&self.sink);
                counts.bytes_out += off as u64;
                self.rbuf.advance(off);
            }
        }
        counts
    }
}

/// Runs the forwarder over the stream `passes` times after a warm-up pass and reports the
/// allocations made while doing so.
fn report_allocations(stream: &[u8]) {
    const PASSES: u64 = 10;
    let before_cold = ALLOCATIONS.load(Ordering::Relaxed);
    let mut fwd = Forwarder::new();
    let first = fwd.forward(stream);
    let cold = ALLOCATIONS.load(Ordering::Relaxed) - before_cold;
    assert_eq!(first.data_rows, ROWS as u64);
    assert_eq!(first.ready, 1);
    assert_eq!(first.bytes_out, stream.len() as u64);

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut rows = 0;
    for _ in 0..PASSES {
        rows += black_box(fwd.forward(stream)).data_rows;
    }
    let warm = ALLOCATIONS.load(Ordering::Relaxed) - before;

    let before_scan = ALLOCATIONS.load(Ordering::Relaxed);
    let scanned = black_box(scan_only(stream));
    let scan_allocs = ALLOCATIONS.load(Ordering::Relaxed) - before_scan;
    assert_eq!(scanned.messages, first.messages);

    println!();
    println!("== allocations per forwarded DataRow (target 0)");
    println!(
        "   steady state: {:.6} per DataRow ({warm} allocations over {rows} DataRows, {} messages, {PASSES} passes of {} bytes in {} KiB chunks)",
        warm as f64 / rows as f64,
        first.messages * PASSES,
        stream.len(),
        CHUNK / 1024,
    );
    println!(
        "   first pass, buffers included: {cold} allocations for {} DataRows",
        first.data_rows
    );
    println!("   FrameScanner alone: {scan_allocs} allocations");
    println!();
}

fn benches(c: &mut Criterion, stream: &[u8]) {
    let messages = scan_only(stream).messages;
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(messages));
    group.bench_function("scan_10k_datarows_8k_chunks", |b| {
        b.iter(|| black_box(scan_only(black_box(stream))))
    });
    let mut fwd = Forwarder::new();
    group.bench_function("forward_10k_datarows_8k_chunks", |b| {
        b.iter(|| black_box(fwd.forward(black_box(stream))))
    });
    group.finish();
}

fn main() {
    let stream = result_stream();
    report_allocations(&stream);
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &stream);
    c.final_summary();
}
