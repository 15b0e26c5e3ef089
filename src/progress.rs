//! Progress for long CLI work: an `indicatif` bar with rate and ETA on a terminal; nothing
//! otherwise (the periodic `tracing` lines say the same in logs).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that exists only when stderr is a terminal and it was asked for.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `unit`s of work (e.g. "messages", "tables").
    pub fn new(enabled: bool, unit: &str) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let template = format!("{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        Progress { bar: Some(bar) }
    }

    /// A disabled bar.
    pub fn none() -> Self {
        Progress { bar: None }
    }

    /// Set the work done and, when known, the total.
    pub fn set(&self, done: u64, total: Option<u64>) {
        if let Some(b) = &self.bar {
            if let Some(t) = total {
                b.set_length(t.max(done));
            }
            b.set_position(done);
        }
    }

    /// Set a short message.
    pub fn message(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
