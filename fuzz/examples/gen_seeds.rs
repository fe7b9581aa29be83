//! Writes the seed corpora into `fuzz/seeds/<target>/`: a few valid inputs per target, so
//! the fuzzers start from the interesting paths (sealed cells that open, honest handshake
//! messages, complete SOCKS5 handshakes, the sample configs, node-to-node envelopes) instead of finding them.
//!
//! Run from `fuzz/`: `cargo run --example gen_seeds` (no nightly flags needed).
//! The targets rebuild the same keys ([`braid_fuzz`]), so these seeds stay valid as long as
//! the protocol's byte layout does.

use std::fs;
use std::path::{Path, PathBuf};

use braid_fuzz::*;
use braid_proto::cell::{CellKind, SessionId};
use braid_proto::frame::{AckBlock, Frame, Mailbox};
use braid_proto::inner::Record;
use braid_proto::wire::Writer;
use rand_core::RngCore;

/// `cargo run --example gen_seeds [TARGET...]`: all targets' seeds, or only those named.
fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let only: Vec<String> = std::env::args().skip(1).collect();
    let gens: [(&str, fn(&Path)); 8] = [
        ("cell", cell),
        ("record", record),
        ("handshake", handshake),
        ("socks5", socks5),
        ("config", config),
        ("envelope", envelope),
        ("resume", resume),
        ("registration", registration),
    ];
    for (name, f) in gens {
        if only.is_empty() || only.iter().any(|o| o == name) {
            f(&root.join(name));
            println!("seeds written under {}", root.join(name).display());
        }
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

fn noise_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    FuzzRng::new(seed).fill_bytes(&mut v);
    v
}

fn cell(dir: &Path) {
    let sid = SessionId(*b"fuzz-session-id!");
    let mut k = cell_keys();
    let cells = [
        ("data-seq0", 1024, CellKind::DATA, 0u64, &b"hello"[..]),
        (
            "data-seq17-epoch1",
            1024,
            CellKind::DATA,
            17,
            &b"second epoch"[..],
        ),
        ("ack-seq5", 1024, CellKind::ACK, 5, &[0u8; 17][..]),
        ("data-2048", 2048, CellKind::DATA, 40, &[0xEE; 300][..]),
    ];
    for (name, size, kind, seq, payload) in cells {
        let c = k.seal(size, kind, sid, seq, payload).expect("seal");
        write(dir, &format!("raw-{name}"), &with_mode(0, &c));
    }
    write(dir, "raw-hello", &with_mode(0, &known_hello_cell(0)));
    for (i, mode) in [1u8, 1, 2, 2, 3, 3].into_iter().enumerate() {
        let n = [80, 600, 40, 300, 60, 200][i];
        write(
            dir,
            &format!("mode{mode}-{i}"),
            &with_mode(mode, &noise_bytes(i as u64, n)),
        );
    }
}

fn cell_body() -> Vec<u8> {
    let ack = AckBlock {
        cum: 10,
        credit: 1034,
        ranges: vec![(12, 15), (20, 21)],
    };
    let frames = [
        Frame::StreamOpen {
            stream: 1,
            gateway: "gateway-1".into(),
        },
        Frame::StreamData {
            stream: 1,
            data: b"inner bytes".to_vec(),
        },
        Frame::StreamEnd { stream: 1 },
        Frame::StreamReset { stream: 2, code: 5 },
        Frame::Mailboxes {
            boxes: vec![Mailbox {
                relay: "relay-1".into(),
                id: [7; 16],
            }],
        },
    ];
    let mut buf = vec![0u8; 300];
    let mut w = Writer::new(&mut buf);
    ack.write_onto(&mut w).expect("ack");
    for f in &frames {
        f.write_onto(&mut w).expect("frame");
    }
    buf
}

fn record(dir: &Path) {
    write(dir, "frames", &with_mode(0, &cell_body()));
    write(dir, "frames-ack-only", &with_mode(0, &cell_body()[..17]));
    // Client records of the fixed stream: decodable and openable by the gateway.
    let (mut cs, _, _, _) = record_pair();
    let mut stream = Vec::new();
    for r in [
        Record::Data(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec()),
        Record::Data(Vec::new()),
        Record::HalfClose,
        Record::Error(4),
        Record::Close,
    ] {
        cs.seal(&r, &mut stream).expect("seal");
    }
    write(dir, "open-records", &with_mode(2, &stream));
    let mut dec = vec![7]; // chunking seed
    dec.extend_from_slice(&stream);
    write(dir, "decoder-records", &with_mode(1, &dec));
    write(
        dir,
        "decoder-oversize",
        &[1, 3, 0, 2, b'h', b'i', 0xFF, 0xFF, 0],
    );
    for i in 0..3u64 {
        write(
            dir,
            &format!("seal-{i}"),
            &with_mode(3, &noise_bytes(10 + i, 100 + 200 * i as usize)),
        );
    }
}

fn handshake(dir: &Path) {
    for (i, m) in known_msg1s().iter().enumerate() {
        write(dir, &format!("msg1-{i}"), &with_mode(0, m));
    }
    write(dir, "msg2", &with_mode(1, &hs_honest_msg2(b"ok")));
    write(dir, "msg2-empty", &with_mode(1, &hs_honest_msg2(b"")));
    for i in 0..3u64 {
        write(
            dir,
            &format!("nk-{i}"),
            &with_mode(2, &noise_bytes(20 + i, 150 + 100 * i as usize)),
        );
        write(
            dir,
            &format!("session-{i}"),
            &with_mode(4, &noise_bytes(30 + i, 120 + 60 * i as usize)),
        );
        let mut o = vec![0xFF];
        o.extend(noise_bytes(40 + i, 120 + 80 * i as usize));
        write(dir, &format!("open-structured-{i}"), &with_mode(5, &o));
    }
    for (i, c) in known_hello_cells().iter().enumerate() {
        write(dir, &format!("hello-{i}"), &with_mode(3, c));
    }
    for (i, m) in known_open_msgs().iter().enumerate() {
        write(dir, &format!("open-{i}"), &with_mode(5, m));
    }
}

fn socks5(dir: &Path) {
    let cat = |parts: &[&[u8]]| parts.concat();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "noauth-connect-v4-early",
            cat(&[
                &[0, 0, 1],
                &[5, 1, 0],
                &[5, 1, 0, 1, 127, 0, 0, 1, 0, 80],
                b"GET /",
            ]),
        ),
        (
            "noauth-connect-domain",
            cat(&[
                &[0, 0, 2],
                &[5, 2, 0, 2],
                &[5, 1, 0, 3, 11],
                b"example.com",
                &[1, 187],
            ]),
        ),
        (
            "noauth-connect-v6",
            cat(&[
                &[0, 0, 3],
                &[5, 1, 0],
                &[5, 1, 0, 4],
                &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                &[0x1f, 0x90],
            ]),
        ),
        (
            "userpass-connect",
            cat(&[
                &[1, 0, 4],
                &[5, 1, 2],
                &[1, 4],
                b"user",
                &[4],
                b"pass",
                &[5, 1, 0, 3, 9],
                b"localhost",
                &[0, 22],
            ]),
        ),
        (
            "userpass-bad-creds",
            cat(&[&[1, 0, 5], &[5, 1, 2], &[1, 4], b"user", &[4], b"nope"]),
        ),
        (
            "bind-and-extra-command",
            cat(&[
                &[2, 0xF0, 6],
                &[5, 1, 0],
                &[5, 0xF0, 0, 3, 4],
                b"tor!",
                &[0, 0],
            ]),
        ),
        (
            "udp-associate-zero",
            cat(&[&[2, 0, 7], &[5, 1, 0], &[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]]),
        ),
        (
            "socks4",
            cat(&[&[0, 0, 8], &[4, 1, 0, 80, 127, 0, 0, 1, 0]]),
        ),
        ("http", cat(&[&[0, 0, 9], b"GET / HTTP/1.1\r\n\r\n"])),
        (
            "bad-atyp",
            cat(&[&[0, 0, 10], &[5, 1, 0], &[5, 1, 0, 9, 1, 2]]),
        ),
    ];
    for (name, bytes) in seeds {
        write(dir, name, &bytes);
    }
}

fn config(dir: &Path) {
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let read = |name: &str| fs::read(samples.join(name)).expect("sample");
    // selector: % 3 = parser (0 directory, 1 node, 2 client), / 3 = file name.
    write(dir, "directory", &with_mode(0, &read("directory.toml")));
    let mut env = read("directory.toml");
    env.extend_from_slice(b"\0BRAID_CELL_SIZE=2048");
    write(dir, "directory-env", &with_mode(3, &env));
    for (i, node) in ["upstream", "central", "downstream", "relay", "gateway"]
        .iter()
        .enumerate()
    {
        write(
            dir,
            &format!("node-{node}"),
            &with_mode(1 + 3 * (i as u8 % 4), &read(&format!("{node}.toml"))),
        );
    }
    let mut env = read("gateway.toml");
    env.extend_from_slice(
        b"\0BRAID_EXIT__ALLOW_LOOPBACK=false\0BRAID_HOSTS={ \"a.example\" = \"10.0.0.1\" }\0BRAID_NODE__ID=gw-2",
    );
    write(dir, "node-gateway-env", &with_mode(4, &env));
    let mut env = read("relay.toml");
    env.extend_from_slice(b"\0BRAID_MIX_DELAY_MS=2.5\0BRAID_ROLE=relay");
    write(dir, "node-relay-env", &with_mode(7, &env));
    write(dir, "client", &with_mode(2, &read("client.toml")));
    let mut env = read("client.toml");
    env.extend_from_slice(b"\0BRAID_WINDOW_CELLS=64\0BRAID_SOCKS_LISTEN=[::1]:1080");
    write(dir, "client-env", &with_mode(5, &env));
}

/// `cell size u8 | message`: a whole envelope, delivery and registration for small cells,
/// and one of each refusal.
fn envelope(dir: &Path) {
    use braid_proto::envelope::{Delivery, Envelope, MailboxSecret, Registration};
    let cat = |parts: &[&[u8]]| parts.concat();
    let cell: Vec<u8> = (0..32u8).collect();
    let id = [0x5A; 16];
    let env = Envelope {
        relay: "relay-1",
        mailbox: id,
        cell: &cell,
    }
    .to_vec()
    .expect("envelope");
    let wide = Envelope {
        relay: "r\u{e9}lais-\u{20ac}",
        mailbox: id,
        cell: &cell,
    }
    .to_vec()
    .expect("envelope");
    let delivery = Delivery {
        mailbox: id,
        cell: &cell,
    }
    .to_vec();
    let registration = Registration {
        secret: MailboxSecret::from_bytes([0x5A; 32]),
    }
    .encode();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("envelope-32", cat(&[&[32], &env])),
        ("envelope-utf8-relay", cat(&[&[32], &wide])),
        (
            "envelope-empty-cell",
            cat(&[&[0], &env[..env.len() - cell.len()]]),
        ),
        ("delivery-32", cat(&[&[32], &delivery])),
        ("registration", cat(&[&[0], &registration])),
        ("empty-relay", cat(&[&[32], &[0], &[0; 48]])),
        (
            "relay-too-long",
            cat(&[&[32], &[33], &[b'r'; 33], &[0; 48]]),
        ),
        ("relay-not-utf8", cat(&[&[32], &[2, 0xC3, 0x28], &[0; 48]])),
    ];
    for (name, bytes) in seeds {
        write(dir, name, &bytes);
    }
}

/// Mode 0 (`0 | flip u8 | frame`): whole registrations and frames one byte short or long;
/// mode 1 (structured): a few arbitrary byte strings (decoded by `arbitrary`).
fn registration(dir: &Path) {
    use braid_proto::envelope::{MailboxSecret, Registration};
    let reg = |b: [u8; 32]| {
        Registration {
            secret: MailboxSecret::from_bytes(b),
        }
        .encode()
    };
    let drawn = MailboxSecret::generate(&mut FuzzRng::new(7));
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("raw-zero", [&[0u8, 0][..], &reg([0; 32])].concat()),
        ("raw-5a-flip255", [&[0u8, 255][..], &reg([0x5A; 32])].concat()),
        ("raw-drawn", [&[0u8, 77][..], drawn.as_bytes()].concat()),
        ("raw-short", [&[0u8, 1][..], &reg([9; 32])[..31]].concat()),
        ("raw-long", [&[0u8, 1][..], &reg([9; 32]), &[9][..]].concat()),
        ("raw-empty", vec![0, 0]),
    ];
    for (name, bytes) in seeds {
        write(dir, name, &bytes);
    }
    for i in 0..4u64 {
        write(
            dir,
            &format!("path-{i}"),
            &with_mode(1, &noise_bytes(50 + i, 120 + 120 * i as usize)),
        );
    }
}

/// `mode | bytes` (`mode % 3`): 0 the honest client's resume request of the fixed stream, a
/// forged copy and an open; 1 the honest gateway's answer and the unknown-stream reply;
/// 2 client records (data, acks within and beyond what the gateway sent) for the gateway end.
fn resume(dir: &Path) {
    use braid_proto::inner::first_message;
    use braid_proto::inner::reliable::{unknown_stream_reply, ReliableStream};
    use braid_proto::inner::FirstMessage;
    let ends = || {
        let (c, g) = stream_keys_pair();
        (ReliableStream::new(c, 0), ReliableStream::new(g, 0))
    };
    let (mut c, mut g) = ends();
    let req = c.resume_request();
    write(dir, "resume-honest", &with_mode(0, &req[2..]));
    let mut forged = req[2..].to_vec();
    *forged.last_mut().expect("a tag") ^= 1;
    write(dir, "resume-forged-tag", &with_mode(0, &forged));
    write(dir, "open", &with_mode(0, &[1]));
    let Ok(FirstMessage::Resume(parsed)) = first_message(&req[2..]) else {
        panic!("the honest resume does not parse");
    };
    let answer = g.accept_resume(&parsed).expect("the honest resume");
    write(dir, "answer-honest", &with_mode(1, &answer[2..]));
    write(dir, "answer-unknown", &with_mode(1, &unknown_stream_reply()[2..]));
    let (mut c, _) = ends();
    let mut stream = Vec::new();
    for r in [
        Record::Data(b"hello".to_vec()),
        Record::Ack(2),
        Record::Ack(4),
        Record::Ack(9),
    ] {
        stream.extend(c.seal(&r).expect("seal"));
    }
    write(dir, "records-acks", &with_mode(2, &stream));
}
