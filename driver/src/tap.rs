//! A test hook that sees every byte a node receives, emits or decrypts. Off unless a test
//! installs one; the who-knows-what tests search these bytes for secrets.

use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapPoint {
    Received,
    Sent,
    Decrypted,
}

pub type Tap = Arc<dyn Fn(&str, TapPoint, &[u8]) + Send + Sync>;

/// Calls the tap if one is installed.
#[inline]
pub fn tap(t: &Option<Tap>, node: &str, point: TapPoint, bytes: &[u8]) {
    if let Some(t) = t {
        t(node, point, bytes);
    }
}
