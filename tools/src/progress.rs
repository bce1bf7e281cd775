//! Progress bars on a terminal, nothing when stderr is piped.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use merkle_index::Progress;

/// A bar counting `total` units of `unit`; hidden unless stderr is a terminal.
pub fn bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = format!(
        "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A callback for the library's scans that drives a bar over segments.
pub fn scan_callback(bar: &ProgressBar) -> impl FnMut(Progress) + '_ {
    move |p: Progress| {
        bar.set_length(p.segments_total.max(1));
        bar.set_position(p.segments_done);
        bar.set_message(format!("{} keys", p.keys));
    }
}
