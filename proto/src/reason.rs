//! Why a stream ended or was refused: one open set of named codes for every place a reason
//! travels or is shown.
//!
//! The same byte is carried by the gateway's sealed open reply (`inner::OpenStatus`, which
//! is this type), by `Record::Error`, by the session's `StreamReset` frame and by a QUIC
//! stream reset; it is answered to the local application as a SOCKS5 reply
//! ([`Reason::socks5_reply`], the one place reasons map to SOCKS) or, for an HTTP proxy, as a
//! status code ([`Reason::http_status`]).
//!
//! Open, like [`ReplyCode`]: an unknown code still decodes, keeps its value, and maps
//! to general failure (SOCKS `01`, HTTP 502).
//!
//! | value | name                    | SOCKS5 reply                 | HTTP |
//! |-------|-------------------------|------------------------------|------|
//! | 0x00  | `OK`                    | `00` succeeded               | 200  |
//! | 0x01  | `GENERAL_FAILURE`       | `01` general failure         | 502  |
//! | 0x02  | `NOT_ALLOWED`           | `02` not allowed by ruleset  | 403  |
//! | 0x03  | `NETWORK_UNREACHABLE`   | `03` network unreachable     | 502  |
//! | 0x04  | `HOST_UNREACHABLE`      | `04` host unreachable        | 502  |
//! | 0x05  | `CONNECTION_REFUSED`    | `05` connection refused      | 502  |
//! | 0x06  | `TIMED_OUT`             | `06` TTL expired             | 504  |
//! | 0x07  | `COMMAND_NOT_SUPPORTED` | `07` command not supported   | 501  |
//! | 0x08  | `ADDRESS_NOT_SUPPORTED` | `08` address type not supp.  | 400  |
//! | 0x10  | `SESSION_CLOSED`        | `01` general failure         | 503  |
//! | 0x11  | `DRAINING`              | `01` general failure         | 503  |
//! | 0x12  | `NO_GATEWAY`            | `03` network unreachable     | 503  |
//! | 0x13  | `GATEWAY_LOST`          | `01` general failure         | 502  |
//! | 0x14  | `PROTOCOL_ERROR`        | `01` general failure         | 502  |
//! | 0x15  | `APP_CLOSED`            | `01` general failure         | 502  |
//! | 0x16  | `RESOURCE_LIMIT`        | `01` general failure         | 503  |
//! | other | unknown                 | `01` general failure         | 502  |
//!
//! Values 0x00–0x08 are the SOCKS5 reply values, as gateways have always sent them in the
//! open reply (a timed-out connect is SOCKS "TTL expired", 6), so nothing changes on the
//! wire. Overlay reasons start at 0x10, clear of the SOCKS range: a peer that predates them
//! maps them to general failure.

use std::fmt;
use std::io::ErrorKind;

use crate::open_enum::open_enum;
use crate::socks5::ReplyCode;

open_enum! {
    /// Why a stream ended or was refused. See the module documentation for the table;
    /// [`name`](Self::name) is the stable snake_case name of a named reason.
    pub struct Reason(u8) {
        /// Success: the stream was opened (the only non-failure value).
        OK = 0x00 => "ok",
        /// Any failure without a more specific reason.
        GENERAL_FAILURE = 0x01 => "general_failure",
        /// The gateway's exit policy refuses the target.
        NOT_ALLOWED = 0x02 => "not_allowed",
        NETWORK_UNREACHABLE = 0x03 => "network_unreachable",
        /// The target host cannot be reached, or its name does not resolve.
        HOST_UNREACHABLE = 0x04 => "host_unreachable",
        CONNECTION_REFUSED = 0x05 => "connection_refused",
        /// Connecting (or waiting for the open reply) took too long. SOCKS calls it TTL expired.
        TIMED_OUT = 0x06 => "timed_out",
        COMMAND_NOT_SUPPORTED = 0x07 => "command_not_supported",
        ADDRESS_NOT_SUPPORTED = 0x08 => "address_not_supported",
        /// The overlay session carrying the stream ended (closed, evicted, timed out).
        SESSION_CLOSED = 0x10 => "session_closed",
        /// The node is draining for shutdown and takes no new streams.
        DRAINING = 0x11 => "draining",
        /// The gateway the stream names is not linked to the central.
        NO_GATEWAY = 0x12 => "no_gateway",
        /// The link to the stream's gateway failed while the stream was open.
        GATEWAY_LOST = 0x13 => "gateway_lost",
        /// The peer broke the protocol (bad record, unauthenticated reply, data after end...).
        PROTOCOL_ERROR = 0x14 => "protocol_error",
        /// The local application closed or aborted its connection.
        APP_CLOSED = 0x15 => "app_closed",
        /// Over a limit (connections, streams, memory).
        RESOURCE_LIMIT = 0x16 => "resource_limit",
    }
    unknown = "unknown({:#04x})";
}

impl Reason {
    /// The wire value.
    pub const fn code(self) -> u8 {
        self.0
    }

    /// Whether this is [`Reason::OK`].
    pub const fn is_ok(self) -> bool {
        self.0 == Reason::OK.0
    }

    /// Whether the value is one of the named reasons.
    pub fn is_known(self) -> bool {
        self.name().is_some()
    }

    /// The name for logs and metric labels: [`name`](Self::name), or `"unknown"`.
    pub fn as_str(self) -> &'static str {
        self.name().unwrap_or("unknown")
    }

    /// The SOCKS5 reply that answers an application whose stream ended this way. The one
    /// place reasons map to SOCKS replies; an unknown reason is general failure.
    pub fn socks5_reply(self) -> ReplyCode {
        match self {
            Reason::OK => ReplyCode::SUCCEEDED,
            Reason::NOT_ALLOWED => ReplyCode::NOT_ALLOWED,
            Reason::NETWORK_UNREACHABLE | Reason::NO_GATEWAY => ReplyCode::NETWORK_UNREACHABLE,
            Reason::HOST_UNREACHABLE => ReplyCode::HOST_UNREACHABLE,
            Reason::CONNECTION_REFUSED => ReplyCode::CONNECTION_REFUSED,
            Reason::TIMED_OUT => ReplyCode::TTL_EXPIRED,
            Reason::COMMAND_NOT_SUPPORTED => ReplyCode::COMMAND_NOT_SUPPORTED,
            Reason::ADDRESS_NOT_SUPPORTED => ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED,
            _ => ReplyCode::GENERAL_FAILURE,
        }
    }

    /// The HTTP status an HTTP proxy answers with: 502 for failures past the proxy (and for
    /// unknown reasons), 403 for the exit policy, 504 for timeouts, 503 when the overlay
    /// cannot take the request now, 501 and 400 for requests it cannot serve.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::OK => 200,
            Reason::NOT_ALLOWED => 403,
            Reason::TIMED_OUT => 504,
            Reason::COMMAND_NOT_SUPPORTED => 501,
            Reason::ADDRESS_NOT_SUPPORTED => 400,
            Reason::SESSION_CLOSED
            | Reason::DRAINING
            | Reason::NO_GATEWAY
            | Reason::RESOURCE_LIMIT => 503,
            _ => 502,
        }
    }

    /// The reason for a failed connect to a target, from its I/O error.
    pub fn from_io_error_kind(kind: ErrorKind) -> Reason {
        match kind {
            ErrorKind::ConnectionRefused => Reason::CONNECTION_REFUSED,
            ErrorKind::NetworkUnreachable => Reason::NETWORK_UNREACHABLE,
            ErrorKind::HostUnreachable => Reason::HOST_UNREACHABLE,
            ErrorKind::TimedOut => Reason::TIMED_OUT,
            _ => Reason::GENERAL_FAILURE,
        }
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reason({:#04x} {})", self.0, self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (reason, wire value, SOCKS5 reply, HTTP status, name): the whole table, pinned.
    const TABLE: [(Reason, u8, u8, u16, &str); 16] = [
        (Reason::OK, 0x00, 0x00, 200, "ok"),
        (Reason::GENERAL_FAILURE, 0x01, 0x01, 502, "general_failure"),
        (Reason::NOT_ALLOWED, 0x02, 0x02, 403, "not_allowed"),
        (
            Reason::NETWORK_UNREACHABLE,
            0x03,
            0x03,
            502,
            "network_unreachable",
        ),
        (
            Reason::HOST_UNREACHABLE,
            0x04,
            0x04,
            502,
            "host_unreachable",
        ),
        (
            Reason::CONNECTION_REFUSED,
            0x05,
            0x05,
            502,
            "connection_refused",
        ),
        (Reason::TIMED_OUT, 0x06, 0x06, 504, "timed_out"),
        (
            Reason::COMMAND_NOT_SUPPORTED,
            0x07,
            0x07,
            501,
            "command_not_supported",
        ),
        (
            Reason::ADDRESS_NOT_SUPPORTED,
            0x08,
            0x08,
            400,
            "address_not_supported",
        ),
        (Reason::SESSION_CLOSED, 0x10, 0x01, 503, "session_closed"),
        (Reason::DRAINING, 0x11, 0x01, 503, "draining"),
        (Reason::NO_GATEWAY, 0x12, 0x03, 503, "no_gateway"),
        (Reason::GATEWAY_LOST, 0x13, 0x01, 502, "gateway_lost"),
        (Reason::PROTOCOL_ERROR, 0x14, 0x01, 502, "protocol_error"),
        (Reason::APP_CLOSED, 0x15, 0x01, 502, "app_closed"),
        (Reason::RESOURCE_LIMIT, 0x16, 0x01, 503, "resource_limit"),
    ];

    #[test]
    fn named_reasons_map_as_documented() {
        for (r, code, socks, http, name) in TABLE {
            assert_eq!(r.code(), code, "{name}");
            assert_eq!(u8::from(r), code);
            assert_eq!(Reason::from(code), r);
            assert_eq!(r.socks5_reply(), ReplyCode(socks), "{name}");
            assert_eq!(r.http_status(), http, "{name}");
            assert_eq!(r.name(), Some(name));
            assert_eq!(r.as_str(), name);
            assert_eq!(r.to_string(), name);
            assert!(r.is_known());
            assert_eq!(r.is_ok(), code == 0);
        }
        let listed: Vec<Reason> = TABLE.iter().map(|t| t.0).collect();
        assert_eq!(listed, Reason::ALL);
    }

    /// The open reply has always carried SOCKS5 reply values; they must not move.
    #[test]
    fn socks_wire_values_are_unchanged() {
        assert_eq!(Reason::OK.0, ReplyCode::SUCCEEDED.0);
        assert_eq!(Reason::GENERAL_FAILURE.0, ReplyCode::GENERAL_FAILURE.0);
        assert_eq!(Reason::NOT_ALLOWED.0, ReplyCode::NOT_ALLOWED.0);
        assert_eq!(
            Reason::NETWORK_UNREACHABLE.0,
            ReplyCode::NETWORK_UNREACHABLE.0
        );
        assert_eq!(Reason::HOST_UNREACHABLE.0, ReplyCode::HOST_UNREACHABLE.0);
        assert_eq!(
            Reason::CONNECTION_REFUSED.0,
            ReplyCode::CONNECTION_REFUSED.0
        );
        assert_eq!(Reason::TIMED_OUT.0, ReplyCode::TTL_EXPIRED.0);
        assert_eq!(
            Reason::COMMAND_NOT_SUPPORTED.0,
            ReplyCode::COMMAND_NOT_SUPPORTED.0
        );
        assert_eq!(
            Reason::ADDRESS_NOT_SUPPORTED.0,
            ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED.0
        );
        // For 0..=8 the SOCKS reply is the value itself, as clients mapped it before.
        for code in 0..=8u8 {
            assert_eq!(Reason(code).socks5_reply(), ReplyCode(code));
        }
        // The bare reset code `1` that nodes and clients send today is general failure.
        assert_eq!(Reason::from(1), Reason::GENERAL_FAILURE);
        // inner::OpenStatus is this type, with the same constants and constructor.
        assert_eq!(crate::inner::OpenStatus::OK, Reason::OK);
        assert_eq!(crate::inner::OpenStatus(6), Reason::TIMED_OUT);
    }

    #[test]
    fn unknown_codes_decode_and_fall_back() {
        for code in 0..=u8::MAX {
            let r = Reason::from(code);
            assert_eq!(r.code(), code);
            if TABLE.iter().any(|t| t.1 == code) {
                continue;
            }
            assert!(!r.is_known() && !r.is_ok());
            assert_eq!(r.socks5_reply(), ReplyCode::GENERAL_FAILURE);
            assert_eq!(r.http_status(), 502);
            assert_eq!(r.as_str(), "unknown");
            assert_eq!(r.name(), None);
        }
        assert_eq!(Reason(0x42).to_string(), "unknown(0x42)");
        assert_eq!(format!("{:?}", Reason(0x42)), "Reason(0x42 unknown)");
        assert_eq!(format!("{:?}", Reason::TIMED_OUT), "Reason(0x06 timed_out)");
    }

    #[test]
    fn io_errors_map_like_the_gateway_did() {
        let cases = [
            (ErrorKind::ConnectionRefused, Reason::CONNECTION_REFUSED),
            (ErrorKind::NetworkUnreachable, Reason::NETWORK_UNREACHABLE),
            (ErrorKind::HostUnreachable, Reason::HOST_UNREACHABLE),
            (ErrorKind::TimedOut, Reason::TIMED_OUT),
            (ErrorKind::ConnectionReset, Reason::GENERAL_FAILURE),
            (ErrorKind::PermissionDenied, Reason::GENERAL_FAILURE),
            (ErrorKind::Other, Reason::GENERAL_FAILURE),
        ];
        for (kind, want) in cases {
            assert_eq!(Reason::from_io_error_kind(kind), want, "{kind:?}");
        }
    }
}
