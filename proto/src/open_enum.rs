//! [`open_enum!`]: an open set of named `u8` codes, declared once.
//!
//! Several wire fields are a byte whose assigned values have names, yet any other value must
//! still decode and keep its value, so that an unknown one is a policy decision rather than a
//! parse failure: the cell kind ([`CellKind`](crate::cell::CellKind)), the SOCKS5 command and
//! reply code ([`Command`](crate::socks5::Command), [`ReplyCode`](crate::socks5::ReplyCode))
//! and the reason a stream ended ([`Reason`](crate::Reason)). Each is a `u8` newtype with
//! associated constants rather than a Rust `enum`. The macro (after Arti's `caret_int!`)
//! writes such a type from one list of entries, so the names, the values, the list of all of
//! them and the text each is shown as cannot drift apart:
//!
//! ```text
//! open_enum! {
//!     /// The type's documentation.
//!     pub struct Kind(u8) {
//!         /// A constant's documentation.
//!         FIRST = 1 => "first",
//!         SECOND = 2 => "second",
//!     }
//!     unknown = "kind {:#04x}";   // how `Display` shows a value without a name
//!     debug = display;            // optional: `Debug` prints what `Display` does
//! }
//! ```
//!
//! declares
//!
//! - `pub struct Kind(pub u8)`, deriving `Clone, Copy, PartialEq, Eq, Hash`;
//! - `pub const FIRST: Kind = Kind(1)` and so on, each with its documentation;
//! - `Kind::ALL`, every named value in the order listed (an array of their number);
//! - `Kind::name(self) -> Option<&'static str>`, the entry's text, `None` for other values;
//! - `From<u8> for Kind` and `From<Kind> for u8`;
//! - `Display`: the name, or otherwise the `unknown` format applied to the value;
//! - with `debug = display;`, `Debug` as `Display`; without it the type writes its own.
//!
//! Methods of one type alone (such as [`Reason::socks5_reply`](crate::Reason::socks5_reply))
//! go in an ordinary `impl` block next to the macro call.

macro_rules! open_enum {
    (@debug display $ty:ident) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(self, f)
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $ty:ident(u8) {
            $(
                $(#[$const_meta:meta])*
                $const:ident = $value:literal => $text:literal,
            )+
        }
        unknown = $unknown:literal;
        $(debug = $debug:ident;)?
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        $vis struct $ty(pub u8);

        impl $ty {
            $(
                $(#[$const_meta])*
                pub const $const: $ty = $ty($value);
            )+

            /// Every named value, in the order the type lists them.
            pub const ALL: [$ty; [$(stringify!($const)),+].len()] = [$($ty::$const),+];

            /// The value's name, if it has one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)+
                    _ => None,
                }
            }
        }

        impl From<u8> for $ty {
            fn from(value: u8) -> Self {
                $ty(value)
            }
        }

        impl From<$ty> for u8 {
            fn from(value: $ty) -> Self {
                value.0
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, $unknown, self.0),
                }
            }
        }

        $($crate::open_enum::open_enum!(@debug $debug $ty);)?
    };
}

pub(crate) use open_enum;

#[cfg(test)]
mod tests {
    open_enum! {
        /// A type for the tests of the macro itself.
        pub struct Sample(u8) {
            /// The first.
            ONE = 1 => "one",
            SIX = 0x06 => "six",
        }
        unknown = "sample {:#04x}";
        debug = display;
    }

    #[test]
    fn declares_constants_names_conversions_and_display() {
        assert_eq!(Sample::ONE, Sample(1));
        assert_eq!(Sample::ALL, [Sample(1), Sample(6)]);
        assert_eq!(Sample::SIX.name(), Some("six"));
        assert_eq!(Sample(2).name(), None);
        assert_eq!(Sample::from(6), Sample::SIX);
        assert_eq!(u8::from(Sample::ONE), 1);
        assert_eq!(Sample::ONE.to_string(), "one");
        assert_eq!(Sample(0xAB).to_string(), "sample 0xab");
        assert_eq!(format!("{:?}", Sample(0xAB)), "sample 0xab");
    }
}
