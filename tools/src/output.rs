//! Standard output that a closed pipe cannot crash.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`diff --json | head`).
//! Output goes through [`line`] instead: once the reader is gone, further output is
//! dropped, the command finishes its work (closing stores cleanly), and the process exits
//! with the command's own status, as if the reader had read everything. Any other write
//! error (a full disk behind a redirect) is remembered and makes the exit status 2.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes `bytes` to stdout, unless the reader is gone.
pub fn bytes(bytes: &[u8]) {
    if CLOSED.load(Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            CLOSED.store(true, Relaxed);
        } else {
            let mut failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
            failed.get_or_insert_with(|| format!("write to stdout: {e}"));
        }
    }
}

/// Writes one line to stdout (see the module docs).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    bytes(text.as_bytes());
}

/// The first write error other than a closed pipe, if any.
pub fn failure() -> Option<String> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// `println!` that survives a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
