//! WebSocket frame work per byte: header parsing, server frame encoding, and unmasking (the
//! word-at-a-time version side by side with the byte loop it replaces).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wiresocket::outbox::shared_frame;
use wiresocket::ws::frame::{parse_header, Opcode};
use wiresocket::ws::mask::{unmask, unmask_bytewise};

const SIZES: [usize; 4] = [64, 1 << 10, 64 << 10, 1 << 20];

fn unmasking(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in SIZES {
        let mut payload = vec![0x5Au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("word", size), &size, |b, _| {
            b.iter(|| unmask(black_box(&mut payload), [1, 2, 3, 4], 0))
        });
        group.bench_with_input(BenchmarkId::new("bytewise", size), &size, |b, _| {
            b.iter(|| unmask_bytewise(black_box(&mut payload), [1, 2, 3, 4], 0))
        });
    }
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_header");
    for (name, header) in [
        ("7-bit", vec![0x82, 0x85, 1, 2, 3, 4]),
        ("16-bit", vec![0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4]),
        (
            "64-bit",
            vec![0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| parse_header(black_box(&header), 16 << 20))
        });
    }
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_shared_frame");
    for size in SIZES {
        let payload = vec![7u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| shared_frame(Opcode::Binary, &[black_box(&payload)]))
        });
    }
    group.finish();
}

criterion_group!(benches, unmasking, parsing, encoding);
criterion_main!(benches);
