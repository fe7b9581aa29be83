//! The SOCKS4/4a request parser (`braid_proto::socks4`).
//!
//! Input: the client's bytes. Checked: never more than `MAX_REQUEST_LEN` bytes are taken;
//! every prefix of the input is incomplete or gives the same verdict as the whole; a
//! parsed request re-encodes to exactly the bytes it took; `reply()` is the documented
//! eight bytes.
#![no_main]

use braid_proto::socks4::{parse_request, reply, MAX_REQUEST_LEN};
use braid_proto::TargetAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_request(data);
    for cut in 0..data.len().min(MAX_REQUEST_LEN + 2) {
        match parse_request(&data[..cut]) {
            Ok(None) => {}
            Ok(Some((r, n))) => {
                assert_eq!(whole.clone().ok().flatten(), Some((r, n)), "decided early at {cut}");
            }
            Err(e) => assert_eq!(whole.clone().err(), Some(e), "error at {cut}"),
        }
    }
    if let Ok(Some((req, n))) = whole {
        assert!(n <= MAX_REQUEST_LEN && n <= data.len());
        let mut enc = vec![4, 1];
        enc.extend_from_slice(&req.target.port().to_be_bytes());
        match &req.target {
            TargetAddr::Ip(a) => match a.ip() {
                std::net::IpAddr::V4(ip) => enc.extend_from_slice(&ip.octets()),
                std::net::IpAddr::V6(_) => panic!("SOCKS4 has no IPv6"),
            },
            TargetAddr::Domain(..) => enc.extend_from_slice(&data[4..8]),
        }
        enc.extend_from_slice(&req.user_id);
        enc.push(0);
        if let TargetAddr::Domain(d, _) = &req.target {
            enc.extend_from_slice(d.as_bytes());
            enc.push(0);
        }
        assert_eq!(&data[..n], &enc[..]);
    }
    assert_eq!(reply(true), [0, 90, 0, 0, 0, 0, 0, 0]);
    assert_eq!(reply(false), [0, 91, 0, 0, 0, 0, 0, 0]);
});
