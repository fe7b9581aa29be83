//! End-to-end tests: curl through `socks5h://` into a real overlay of separate nodes (each
//! a task with its own 127.x.y.z address, its own keys, talking real QUIC).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use braid_testkit as support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_client::demo::{Demo, DemoOptions};
use braid_config::Role;
use braid_driver::{Metrics, Tap, TapPoint};
use support::*;

const MIB: u64 = 1024 * 1024;

fn opts() -> DemoOptions {
    // RUST_LOG=braid=debug shows the nodes' logs for a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        ..DemoOptions::default()
    }
}

fn cells_in(demo: &Demo, role: Role) -> Vec<(String, u64)> {
    demo.nodes
        .iter()
        .filter(|n| n.role == role)
        .map(|n| (n.id.clone(), Metrics::get(&n.metrics.cells_in)))
        .collect()
}

/// Every node of `role` carried at least a tenth of the cells its role carried.
fn assert_spread(demo: &Demo, role: Role) {
    let counts = cells_in(demo, role);
    let total: u64 = counts.iter().map(|(_, c)| c).sum();
    assert!(total > 0, "{role} carried nothing");
    for (id, c) in &counts {
        assert!(
            *c * 10 >= total,
            "{id} carried {c} of {total} cells: not a share ({counts:?})"
        );
    }
    eprintln!("{role} cells: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_and_upload_64_mib_byte_identical_spread_over_paths() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(opts()).await.unwrap();

    let n = 64 * MIB;
    let got = curl_sha256(demo.socks, &format!("http://{origin}/bytes/{n}")).await;
    assert_eq!(got, expected_sha256(n), "download differs");
    assert_spread(&demo, Role::Downstream);

    let up = spawn_upload(demo.socks, origin, n).await.unwrap();
    assert_eq!(up, expected_sha256(n), "upload differs");
    assert_spread(&demo, Role::Upstream);
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_arrive_intact() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(opts()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let socks = demo.socks;
        let n = 64 * 1024 + i * 4099;
        tasks.push(tokio::spawn(async move {
            let got = curl_sha256(socks, &format!("http://{origin}/bytes/{n}")).await;
            (n, got)
        }));
    }
    for t in tasks {
        let (n, got) = t.await.unwrap();
        assert_eq!(got, expected_sha256(n), "stream of {n} bytes differs");
    }
    demo.shutdown().await;
}

/// Who knows what: a unique marker in the payload to a unique host name. No upstream,
/// central, downstream or relay sees either in any byte it received, emitted or decrypted;
/// the gateway sees both. The network has an operator key and the client a credential for
/// a unique user name: the first hops (upstreams, relays) see the name and the user's key,
/// and no central, downstream or gateway sees either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateway_sees_destination_and_payload() {
    type Log = Arc<Mutex<HashMap<(String, &'static str), Vec<u8>>>>;
    let log: Log = Arc::default();
    let l = log.clone();
    let tap: Tap = Arc::new(move |node: &str, point: TapPoint, bytes: &[u8]| {
        let point = match point {
            TapPoint::Received => "received",
            TapPoint::Sent => "sent",
            TapPoint::Decrypted => "decrypted",
        };
        l.lock()
            .unwrap()
            .entry((node.to_string(), point))
            .or_default()
            .extend_from_slice(bytes);
    });
    let origin = start_origin([127, 0, 0, 1]).await;
    let unique = format!("{:016x}", rand_u64());
    let host = format!("secret-dest-{unique}.example");
    let marker = format!("MARKER{unique}PAYLOAD");
    let user = format!("user-{unique}");
    let mut o = opts();
    o.tap = Some(tap);
    o.hosts.insert(host.clone(), origin.ip());
    o.user = Some(user.clone());
    let demo = Demo::start(o).await.unwrap();
    let user_key = demo.user_key.expect("the demo has a user");

    let url = format!("http://{host}:{}/echo/{marker}", origin.port());
    let (ok, body) = curl(demo.socks, &[&url]).await;
    assert!(ok);
    assert_eq!(String::from_utf8_lossy(&body), marker);
    // Also a payload-carrying upload, so the marker rides in request cells as data.
    let (ok, _) = curl(
        demo.socks,
        &[
            "--data-binary",
            &marker.repeat(50),
            &format!("http://{host}:{}/upload", origin.port()),
        ],
    )
    .await;
    assert!(ok);
    // Every node but the gateway (upstreams, central, downstreams, relays) must be tapped.
    let forwarders: Vec<String> = demo
        .nodes
        .iter()
        .filter(|n| n.role != Role::Gateway)
        .map(|n| n.id.clone())
        .collect();
    let first_hops = demo
        .nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Upstream | Role::Relay))
        .count();
    demo.shutdown().await;

    let log = log.lock().unwrap();
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    let has_key = |hay: &[u8]| hay.windows(32).any(|w| w == user_key);
    let mut gateway_saw = (false, false);
    let mut first_hops_saw = std::collections::BTreeSet::new();
    let mut checked = 0;
    for ((node, point), bytes) in log.iter() {
        if node == "client" {
            continue;
        }
        // Only a first hop may learn who the user is.
        if node.starts_with("upstream") || node.starts_with("relay") {
            if contains(bytes, &user) && has_key(bytes) {
                first_hops_saw.insert(node.clone());
            }
        } else {
            assert!(!contains(bytes, &user), "{node} {point} saw the user name");
            assert!(!has_key(bytes), "{node} {point} saw the user key");
        }
        if node.starts_with("gateway") {
            gateway_saw.0 |= contains(bytes, &host);
            gateway_saw.1 |= contains(bytes, &marker);
            continue;
        }
        checked += bytes.len();
        assert!(
            !contains(bytes, &host),
            "{node} {point} saw the destination"
        );
        assert!(!contains(bytes, &marker), "{node} {point} saw the payload");
    }
    assert!(
        checked > 100_000,
        "the tap saw too little ({checked} bytes) to mean anything"
    );
    assert_eq!(forwarders.len(), 6);
    for node in forwarders {
        assert!(
            log.keys().any(|(n, _)| *n == node),
            "no bytes tapped at {node}"
        );
    }
    assert!(log.contains_key(&("central-1".to_string(), "decrypted")));
    // The positive control: the tap does see the credential, at every first hop.
    assert_eq!(
        first_hops_saw.len(),
        first_hops,
        "first hops that saw the user: {first_hops_saw:?}"
    );
    assert_eq!(
        gateway_saw,
        (true, true),
        "the gateway must see destination and payload"
    );
}

/// Who knows what, in headers: every forwarding hop (upstreams, downstreams, relays) sees its
/// own identifiers and no other hop's. Upstreams route by per-path labels (never the
/// session id); downstream cells carry no label, and the mailbox address a downstream reads
/// is rewritten before the relay gets it. Sequence numbers and kinds are masked: what a
/// forwarder reads in those fields is noise, not a counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_hops_share_no_header_identifier_and_read_no_counter() {
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let l = seen.clone();
    let tap: Tap = Arc::new(move |node: &str, point: TapPoint, bytes: &[u8]| {
        if point == TapPoint::Received {
            l.lock().unwrap().push((node.to_string(), bytes.to_vec()));
        }
    });
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut o = opts();
    o.tap = Some(tap);
    let demo = Demo::start(o).await.unwrap();
    for n in [2_000_000u64, 3_000_000] {
        let got = curl_sha256(demo.socks, &format!("http://{origin}/bytes/{n}")).await;
        assert_eq!(got, expected_sha256(n));
    }
    let up = spawn_upload(demo.socks, origin, 3_000_000).await.unwrap();
    assert_eq!(up, expected_sha256(3_000_000));
    let roles: HashMap<String, Role> = demo.nodes.iter().map(|n| (n.id.clone(), n.role)).collect();
    demo.shutdown().await;

    // Per forwarding node: the identifiers its headers carried, and the cells it read.
    let mut ids: HashMap<String, std::collections::HashSet<[u8; 16]>> = HashMap::new();
    let mut cells: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let mut zero_labels = 0;
    for (node, msg) in seen.lock().unwrap().iter() {
        let (mailbox, cell) = match roles.get(node) {
            Some(Role::Upstream) => (None, msg.as_slice()),
            // Envelope: relay_len | relay | mailbox | cell.
            Some(Role::Downstream) => {
                let at = 1 + usize::from(msg[0]);
                (Some(&msg[at..at + 16]), &msg[at + 16..])
            }
            // Delivery: mailbox | cell.
            Some(Role::Relay) => (Some(&msg[..16]), &msg[16..]),
            _ => continue,
        };
        let set = ids.entry(node.clone()).or_default();
        if let Some(m) = mailbox {
            set.insert(m.try_into().unwrap());
        }
        let label: [u8; 16] = cell[2..18].try_into().unwrap();
        if roles[node] == Role::Upstream {
            set.insert(label);
        } else {
            // Toward the client no cell names its session: the mailbox does.
            assert_eq!(
                label, [0; 16],
                "{node} read a label on a cell to the client"
            );
            zero_labels += 1;
        }
        cells.entry(node.clone()).or_default().push(cell.to_vec());
    }
    assert!(zero_labels > 100, "too few cells to the client tapped");
    let forwarders = roles
        .values()
        .filter(|r| matches!(r, Role::Upstream | Role::Downstream | Role::Relay))
        .count();
    assert_eq!(
        ids.len(),
        forwarders,
        "a forwarder saw nothing: {:?}",
        ids.keys()
    );
    let nodes: Vec<&String> = ids.keys().collect();
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            let shared: Vec<_> = ids[*a].intersection(&ids[*b]).collect();
            assert!(
                shared.is_empty(),
                "{a} and {b} both saw identifier(s) {shared:?}"
            );
        }
        eprintln!(
            "{a}: {} identifier(s) in {} cells",
            ids[*a].len(),
            cells[*a].len()
        );
    }

    // Sequence numbers: the session sent a few thousand cells, so any real seq is small; a
    // masked one is a uniform 64-bit value. Kinds: two sealed kinds show as many values.
    for (node, cs) in &cells {
        let mut kinds = std::collections::HashSet::new();
        let mut small = 0;
        let mut sealed = 0;
        for c in cs {
            let kind = c[0];
            if kind == 1 || kind == 2 {
                // Perhaps a Hello or Welcome (whose fields are zero), perhaps a masked kind.
                continue;
            }
            sealed += 1;
            kinds.insert(kind);
            let seq = u64::from_be_bytes(c[20..28].try_into().unwrap());
            if seq < 1 << 32 {
                small += 1;
            }
        }
        assert!(sealed > 50, "{node}: {sealed} sealed cells");
        assert_eq!(
            small, 0,
            "{node} read {small} plausible sequence numbers of {sealed}"
        );
        assert!(kinds.len() > 16, "{node} read only {} kinds", kinds.len());
    }
}

/// A SOCKS5 CONNECT to `host:port` whose request and `early` bytes go in one write (so
/// `early` rides in the open as early data); the reply code and everything after the reply.
async fn socks_with_early(
    proxy: std::net::SocketAddr,
    host: &str,
    port: u16,
    early: &[u8],
) -> (u8, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut out = vec![5, 1, 0];
    out.extend(support::socks::connect_domain(host.as_bytes(), port));
    out.extend_from_slice(early);
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("the proxy answers")
        .unwrap();
    // Method reply (2 bytes), then the CONNECT reply (10 bytes with an IPv4 address).
    assert!(got.len() >= 12, "short SOCKS answer {got:?}");
    (got[3], got[12..].to_vec())
}

/// Splits an inner byte stream into its messages' framed lengths; the bytes left over.
fn frame_lengths(mut bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut lens = Vec::new();
    while bytes.len() >= 2 {
        let n = 2 + usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        if bytes.len() < n {
            break;
        }
        lens.push(n);
        bytes = &bytes[n..];
    }
    (lens, bytes.len())
}

/// What sizes the central can read. It carries each inner stream's bytes in the clear
/// (they are sealed inside), so the tap of what it decrypted from the client, stream by
/// stream, is its view of the client → gateway direction, and the client's, of the
/// other. Opens to a short and a 200-byte host name with different early data, and one
/// the gateway refuses, have first messages of one length; the gateway's replies, success
/// or refusal, have one length; and every record either way is one of the bucket sizes,
/// through small requests, a download and an upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_central_sees_only_fixed_and_bucket_sizes() {
    type Events = Arc<Mutex<Vec<(String, TapPoint, Vec<u8>)>>>;
    let events: Events = Arc::default();
    let e = events.clone();
    let tap: Tap = Arc::new(move |node: &str, point: TapPoint, bytes: &[u8]| {
        if point == TapPoint::Decrypted && (node == "client" || node.starts_with("central")) {
            e.lock()
                .unwrap()
                .push((node.to_string(), point, bytes.to_vec()));
        }
    });
    let origin = start_origin([127, 0, 0, 1]).await;
    let short = "a.example".to_string();
    let long = format!("{}.example", "b".repeat(200));
    let closed_port = support::free_port([127, 0, 0, 1].into(), false);
    let mut o = opts();
    o.tap = Some(tap);
    o.hosts.insert(short.clone(), origin.ip());
    o.hosts.insert(long.clone(), origin.ip());
    let demo = Demo::start(o).await.unwrap();
    let gateways: Vec<String> = demo
        .nodes
        .iter()
        .filter(|n| n.role == Role::Gateway)
        .map(|n| n.id.clone())
        .collect();
    // One stream at a time, with a pause so that each one's last acks are in before the
    // next opens: the central's tap then reads stream by stream.
    let pause = || tokio::time::sleep(Duration::from_millis(500));
    let (code, body) = socks_with_early(
        demo.socks,
        &short,
        origin.port(),
        b"GET /echo/short HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(code, 0);
    assert!(body.ends_with(b"short"));
    pause().await;
    let padded = format!(
        "GET /echo/long HTTP/1.1\r\nx-pad: {}\r\n\r\n",
        "p".repeat(600)
    );
    let (code, body) = socks_with_early(demo.socks, &long, origin.port(), padded.as_bytes()).await;
    assert_eq!(code, 0);
    assert!(body.ends_with(b"long"));
    pause().await;
    // Refused by the target (nothing listens): the gateway's reply carries a reason.
    let (code, _) = socks_with_early(demo.socks, &short, closed_port, b"").await;
    assert_ne!(code, 0);
    pause().await;
    let n = 300_000;
    let got = curl_sha256(
        demo.socks,
        &format!("http://{short}:{}/bytes/{n}", origin.port()),
    )
    .await;
    assert_eq!(got, expected_sha256(n));
    pause().await;
    let up = spawn_upload(demo.socks, origin, n).await.unwrap();
    assert_eq!(up, expected_sha256(n));
    pause().await;
    demo.shutdown().await;

    use braid_proto::inner::{sealed_record_len, OPEN_MESSAGE_LEN, REPLY_MESSAGE_LEN};
    let buckets: Vec<usize> = [0, 254, 1022, 4094]
        .into_iter()
        .map(sealed_record_len)
        .collect();
    let events = events.lock().unwrap();
    // The central's view, client → gateway: a stream starts where it says which gateway.
    let mut streams: Vec<Vec<u8>> = Vec::new();
    for (node, _, bytes) in events.iter().filter(|(n, _, _)| n.starts_with("central")) {
        if gateways.iter().any(|g| g.as_bytes() == &bytes[..]) {
            streams.push(Vec::new());
        } else if let Some(s) = streams.last_mut() {
            s.extend_from_slice(bytes);
        } else {
            panic!("{node} decrypted stream bytes before any stream opened");
        }
    }
    assert_eq!(streams.len(), 5, "one carrier per stream");
    let mut firsts = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let (lens, left) = frame_lengths(s);
        assert_eq!(left, 0, "stream {i}: a partial message");
        firsts.push(lens[0]);
        for l in &lens[1..] {
            assert!(buckets.contains(l), "stream {i}: a record of {l} bytes");
        }
    }
    assert!(
        firsts.iter().all(|&l| l == firsts[0]),
        "first messages of different lengths: {firsts:?}"
    );
    assert_eq!(firsts[0], OPEN_MESSAGE_LEN);
    // The cost of padding on bulk data: records come out full (the pump fills a record with
    // whatever is ready), so the upload's bytes on the wire are close to its payload.
    let upload_wire: usize = streams[4].len();
    eprintln!(
        "upload: {upload_wire} bytes carried for {n} of payload ({:.3}x)",
        upload_wire as f64 / n as f64
    );
    assert!(
        upload_wire < n as usize * 5 / 4,
        "padding overhead too high"
    );
    // The client's view of what the central sent it, gateway → client.
    let down: Vec<u8> = events
        .iter()
        .filter(|(n, _, _)| n == "client")
        .flat_map(|(_, _, b)| b.iter().copied())
        .collect();
    let (lens, left) = frame_lengths(&down);
    assert_eq!(left, 0, "a partial message");
    let replies = lens.iter().filter(|&&l| l == REPLY_MESSAGE_LEN).count();
    assert_eq!(replies, 5, "one reply per open, refused or not: {lens:?}");
    for l in &lens {
        assert!(
            *l == REPLY_MESSAGE_LEN || buckets.contains(l),
            "a message of {l} bytes"
        );
    }
    assert!(
        lens.len() > 20,
        "the download rode in records: {}",
        lens.len()
    );
    eprintln!(
        "download: {} bytes carried for {n} of payload and four small answers ({:.3}x)",
        down.len(),
        down.len() as f64 / n as f64
    );
    assert!(down.len() < n as usize * 5 / 4, "padding overhead too high");
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// Waits until one of `nodes` has handled `cells` cells, then stops it (the first to get
/// there: how the central spreads cells over two relays or downstreams varies from run to
/// run). Fails if `transfer` ended first (the kill would not be mid-transfer) or no node
/// gets that far.
async fn kill_when<T>(
    demo: &Demo,
    nodes: &[&str],
    cells: u64,
    transfer: &tokio::task::JoinHandle<T>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let busy = || {
        nodes
            .iter()
            .map(|id| demo.node(id).unwrap())
            .find(|n| Metrics::get(&n.metrics.cells_in) >= cells)
    };
    let n = loop {
        if let Some(n) = busy() {
            break n;
        }
        if transfer.is_finished() || tokio::time::Instant::now() >= deadline {
            let counts: Vec<_> = demo
                .nodes
                .iter()
                .map(|n| {
                    let m = &n.metrics;
                    format!(
                        "{} in={} out={} dropped={} dup={} retx={}",
                        n.id,
                        Metrics::get(&m.cells_in),
                        Metrics::get(&m.cells_out),
                        Metrics::get(&m.cells_dropped),
                        Metrics::get(&m.cells_duplicate),
                        Metrics::get(&m.retransmits)
                    )
                })
                .collect();
            panic!(
                "none of {nodes:?} carried {cells} cells while the transfer ran (finished: {}): {counts:#?}",
                transfer.is_finished()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!(
        "killing {} after {} cells",
        n.id,
        Metrics::get(&n.metrics.cells_in)
    );
    assert!(demo.kill(&n.id.clone()));
}

async fn download_survives_kill(mut o: DemoOptions, victims: &[&str]) {
    o.socks = "127.0.0.1:0".parse().unwrap();
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Arc::new(Demo::start(o).await.unwrap());
    let n = 64 * MIB;
    let socks = demo.socks;
    let url = format!("http://{origin}/bytes/{n}");
    let transfer = tokio::spawn(async move { curl_sha256(socks, &url).await });
    // A third of its share of a 64 MiB transfer (8 KiB cells, two nodes per role).
    kill_when(&demo, victims, 1000, &transfer).await;
    assert_eq!(transfer.await.unwrap(), expected_sha256(n));
    let demo = Arc::try_unwrap(demo).ok().unwrap();
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_killed_mid_download_loses_nothing() {
    download_survives_kill(opts(), &["downstream-1", "downstream-2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_download_loses_nothing() {
    let mut o = opts();
    o.layout.relays = 2;
    download_survives_kill(o, &["relay-1", "relay-2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_upload_loses_nothing() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Arc::new(Demo::start(opts()).await.unwrap());
    let n = 64 * MIB;
    let transfer = spawn_upload(demo.socks, origin, n);
    kill_when(&demo, &["upstream-1"], 1000, &transfer).await;
    assert_eq!(transfer.await.unwrap(), expected_sha256(n));
    let demo = Arc::try_unwrap(demo).ok().unwrap();
    demo.shutdown().await;
}

/// Cells captured at one upstream are replayed through the other upstream while the upload
/// runs, and copies moved to other sequence numbers are injected too: the central drops and
/// counts every one, and the destination receives each byte exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_spliced_cells_are_rejected_mid_transfer() {
    let captured: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let c = captured.clone();
    let tap: Tap = Arc::new(move |node: &str, point: TapPoint, bytes: &[u8]| {
        if node == "upstream-1" && point == TapPoint::Received {
            let mut c = c.lock().unwrap();
            if c.len() < 300 {
                c.push(bytes.to_vec());
            }
        }
    });
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut o = opts();
    o.tap = Some(tap);
    let demo = Demo::start(o).await.unwrap();
    let n = 32 * MIB;
    let transfer = spawn_upload(demo.socks, origin, n);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while captured.lock().unwrap().len() < 300 {
        assert!(
            !transfer.is_finished() && tokio::time::Instant::now() < deadline,
            "upstream-1 did not carry 300 cells while the upload ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Inject through upstream-2, as a client would.
    let up2 = demo.directory.by_id("upstream-2").unwrap().clone();
    let ep = braid_net::client_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let conn = braid_net::connect(&ep, up2.addr.unwrap(), up2.tls_key)
        .await
        .unwrap();
    let mut tx = conn.open_uni().await.unwrap();
    let route = braid_proto::envelope::Route {
        central: "central-1",
    }
    .encode()
    .unwrap();
    braid_net::write_frame(&mut tx, &route).await.unwrap();
    let cells = captured.lock().unwrap().clone();
    let central = demo.node("central-1").unwrap();
    let before = (
        Metrics::get(&central.metrics.cells_duplicate),
        Metrics::get(&central.metrics.cells_rejected),
    );
    for cell in &cells {
        braid_net::write_frame(&mut tx, cell).await.unwrap(); // replay on another path
        let mut moved = cell.clone();
        moved[27] ^= 0x01; // the same cell claiming another sequence number
        braid_net::write_frame(&mut tx, &moved).await.unwrap();
        let mut spliced = cell.clone();
        spliced[200] ^= 0x80; // its sealed body edited (another stream id, other bytes)
        braid_net::write_frame(&mut tx, &spliced).await.unwrap();
        let mut far = cell.clone();
        far[23] ^= 0x01; // a sequence number far ahead, under the same epoch
        braid_net::write_frame(&mut tx, &far).await.unwrap();
    }
    assert_eq!(
        transfer.await.unwrap(),
        expected_sha256(n),
        "bytes duplicated or lost"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dup = Metrics::get(&central.metrics.cells_duplicate) - before.0;
    let rej = Metrics::get(&central.metrics.cells_rejected) - before.1;
    eprintln!("central dropped {dup} duplicates and rejected {rej} forged cells");
    // Copies of sequence numbers already received are dropped before the AEAD (duplicates,
    // whatever their bytes); the rest fail the window, epoch or AEAD check (rejected).
    assert!(
        dup >= 3 * cells.len() as u64 - 10,
        "replays must be dropped as duplicates ({dup})"
    );
    assert!(
        rej >= cells.len() as u64 - 5,
        "forged cells must be rejected ({rej})"
    );
    demo.shutdown().await;
}

/// The lowest-delay scheduler (`scheduler = "rtt"`) moves data intact too and still uses
/// every upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtt_scheduler_transfers_intact() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut o = opts();
    o.scheduler = braid_proto::session::PathScheduler::LowestDelay;
    let demo = Demo::start(o).await.unwrap();
    let n = 16 * MIB;
    let up = spawn_upload(demo.socks, origin, n).await.unwrap();
    assert_eq!(up, expected_sha256(n));
    for (id, c) in cells_in(&demo, Role::Upstream) {
        assert!(c > 0, "{id} carried nothing");
    }
    demo.shutdown().await;
}
