//! The sync path without sockets: decode + apply + encode of one update, and its fan-out to
//! 1, 10, 100 and 1,000 subscribers (the frame is encoded once and shared); and 8 updates of
//! one read applied one transaction each against one batch (`Room::stage` + `Room::flush`).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::rc::Rc;
use wiresocket::outbox::Outbox;
use wiresocket::sync::protocol::{encode_sync, SYNC_UPDATE};
use wiresocket::sync::room::{Room, RoomConfig};
use yrs::{Text, Transact};

/// `n` consecutive one-character updates from one client, as y-websocket sends them.
fn updates(n: usize) -> Vec<Vec<u8>> {
    let doc = yrs::Doc::with_client_id(7);
    let text = doc.get_or_insert_text("t");
    (0..n)
        .map(|i| {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, i as u32, "x");
            encode_sync(SYNC_UPDATE, &txn.encode_update_v1())
        })
        .collect()
}

/// Drops what the subscribers were sent, as their writers would.
fn drain(outboxes: &[Rc<Outbox>]) {
    for o in outboxes {
        o.consume(o.queued_bytes());
    }
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("room_receive_update");
    for subscribers in [1usize, 10, 100, 1000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, &n| {
                let messages = updates(20_000);
                let mut room = Room::new(RoomConfig::default());
                let outboxes: Vec<Rc<Outbox>> =
                    (0..=n).map(|_| Rc::new(Outbox::new(usize::MAX))).collect();
                let slots: Vec<_> = outboxes.iter().map(|o| room.join(o.clone())).collect();
                drain(&outboxes);
                let mut next = messages.iter().cycle();
                b.iter(|| {
                    let outcome = room.receive(slots[0], next.next().unwrap(), true).unwrap();
                    assert_eq!(outcome.deliveries, n);
                    drain(&outboxes);
                });
            },
        );
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    const BATCH: usize = 8;
    let mut group = c.benchmark_group("room_8_updates");
    group.throughput(Throughput::Elements(BATCH as u64));
    let messages = updates(BATCH);
    for batched in [false, true] {
        let name = if batched { "one_batch" } else { "one_by_one" };
        group.bench_function(name, |b| {
            // A fresh room each time (setup is not timed), so every update is new to it.
            let setup = || {
                let mut room = Room::new(RoomConfig::default());
                let outboxes: Vec<Rc<Outbox>> =
                    (0..8).map(|_| Rc::new(Outbox::new(usize::MAX))).collect();
                let slots: Vec<_> = outboxes.iter().map(|o| room.join(o.clone())).collect();
                (room, outboxes, slots[0])
            };
            b.iter_batched(
                setup,
                |(mut room, outboxes, from)| {
                    let mut deliveries = 0;
                    for m in &messages {
                        let outcome = if batched {
                            room.stage(from, m, true)
                        } else {
                            room.receive(from, m, true)
                        };
                        deliveries += outcome.unwrap().deliveries;
                    }
                    deliveries += room.flush().deliveries;
                    room.integrate_all();
                    assert_eq!(deliveries, BATCH * 7);
                    (room, outboxes)
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out, batch);
criterion_main!(benches);
