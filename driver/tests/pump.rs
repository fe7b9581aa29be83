//! The sealed-record pump between an application socket and an inner stream, with the
//! carrier in memory: what goes through, and what counts as an abort.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io;

use braid_driver::pump::{self, Inbound, Outbound, SealedSink, SealedSource};
use braid_proto::inner::{
    self, MessageDecoder, OpenRequest, OpenStatus, Record, RecordOpener, RecordSealer,
};
use braid_proto::noise::StaticKeypair;
use braid_proto::TargetAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sealed records written, and whether `finish` was called.
#[derive(Default)]
struct VecSink {
    records: Vec<Vec<u8>>,
    finished: bool,
}

impl SealedSink for VecSink {
    async fn write_sealed(&mut self, sealed: &mut Vec<u8>) -> io::Result<()> {
        self.records.push(std::mem::take(sealed));
        Ok(())
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        Ok(())
    }
}

/// Hands out the given chunks, then ends.
struct VecSource(VecDeque<Vec<u8>>);

impl SealedSource for VecSource {
    async fn read_into(&mut self, dec: &mut MessageDecoder) -> bool {
        match self.0.pop_front() {
            Some(c) => {
                dec.push(&c);
                true
            }
            None => false,
        }
    }
}

/// The two ends of one inner stream: (client sealer, client opener, gateway sealer, gateway
/// opener).
fn keys() -> (RecordSealer, RecordOpener, RecordSealer, RecordOpener) {
    let mut rng = rand::rng();
    let gateway = StaticKeypair::generate(&mut rng);
    let req = OpenRequest {
        target: TargetAddr::Domain("example.com".into(), 80),
        early_data: Vec::new(),
    };
    let (open, first) = inner::client_open(&mut rng, &gateway.public(), &req).unwrap();
    let mut dec = MessageDecoder::default();
    dec.push(&first);
    let msg1 = dec.next_message().unwrap().unwrap();
    let (accepted, _) = inner::gateway_accept(&gateway, &msg1).unwrap();
    let mut reply = Vec::new();
    let (g_sealer, g_opener) = accepted
        .reply(&mut rng, OpenStatus::OK, &mut reply)
        .unwrap();
    dec.push(&reply);
    let msg2 = dec.next_message().unwrap().unwrap();
    let (_, _, c_sealer, c_opener) = open.finish(&msg2).unwrap();
    (c_sealer, c_opener, g_sealer, g_opener)
}

fn sealed(sealer: &mut RecordSealer, recs: &[Record]) -> Vec<Vec<u8>> {
    recs.iter()
        .map(|r| {
            let mut out = Vec::new();
            sealer.seal(r, &mut out).unwrap();
            out
        })
        .collect()
}

#[tokio::test]
async fn app_bytes_leave_as_records_then_a_half_close() {
    let (mut c_sealer, _, _, mut g_opener) = keys();
    let (mut app, mut ours) = tokio::io::duplex(64 * 1024);
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let writer = tokio::spawn({
        let data = data.clone();
        async move { app.write_all(&data).await.unwrap() }
    });
    let mut sink = VecSink::default();
    let out = pump::app_to_overlay(&mut ours, &mut c_sealer, &mut sink, |_| {}).await;
    writer.await.unwrap();
    assert_eq!(out, Outbound::Finished);
    assert!(sink.finished);
    let mut got = Vec::new();
    let mut dec = MessageDecoder::default();
    for r in &sink.records {
        dec.push(r);
    }
    let mut last = None;
    while let Some(m) = dec.next_message().unwrap() {
        match g_opener.open(&m).unwrap() {
            Record::Data(d) => got.extend_from_slice(&d),
            other => last = Some(other),
        }
    }
    assert_eq!(got, data);
    assert_eq!(last, Some(Record::HalfClose));
}

/// Pumps `chunks` with `opener` into an application that is not read; how it ended.
async fn pump_to_app(chunks: Vec<Vec<u8>>, opener: &mut RecordOpener) -> Inbound {
    let (_app, mut ours) = tokio::io::duplex(64 * 1024);
    let mut dec = MessageDecoder::default();
    pump::overlay_to_app(
        &mut VecSource(chunks.into()),
        &mut dec,
        opener,
        &mut ours,
        |_| {},
    )
    .await
}

#[tokio::test]
async fn records_then_the_sealed_half_close_reach_the_app_and_finish() {
    let (_, mut c_opener, mut g_sealer, _) = keys();
    let chunks = sealed(
        &mut g_sealer,
        &[
            Record::Data(b"hello ".to_vec()),
            Record::Data(b"world".to_vec()),
            Record::HalfClose,
        ],
    );
    let (mut app, mut ours) = tokio::io::duplex(64 * 1024);
    let mut src = VecSource(chunks.into());
    let mut dec = MessageDecoder::default();
    let r = pump::overlay_to_app(&mut src, &mut dec, &mut c_opener, &mut ours, |_| {}).await;
    assert_eq!(r, Inbound::Finished);
    let mut got = Vec::new();
    app.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello world");
}

/// A carrier that ends without the sealed half-close is an abort, so that nobody between
/// the ends can cut a stream short unnoticed.
#[tokio::test]
async fn a_stream_cut_before_its_sealed_close_is_an_abort() {
    let (_, mut c_opener, mut g_sealer, _) = keys();
    let chunks = sealed(&mut g_sealer, &[Record::Data(b"partial".to_vec())]);
    assert_eq!(pump_to_app(chunks, &mut c_opener).await, Inbound::Aborted);
}

#[tokio::test]
async fn a_tampered_or_replayed_record_is_an_abort() {
    let (_, mut c_opener, mut g_sealer, _) = keys();
    let mut chunks = sealed(
        &mut g_sealer,
        &[Record::Data(b"one".to_vec()), Record::HalfClose],
    );
    let last = chunks.len() - 1;
    chunks[last][6] ^= 1;
    assert_eq!(
        pump_to_app(chunks, &mut c_opener).await,
        Inbound::Aborted,
        "tampered"
    );

    let (_, mut c_opener, mut g_sealer, _) = keys();
    let one = sealed(&mut g_sealer, &[Record::Data(b"one".to_vec())]);
    let replayed = vec![one[0].clone(), one[0].clone()];
    assert_eq!(
        pump_to_app(replayed, &mut c_opener).await,
        Inbound::Aborted,
        "replayed"
    );
}
