//! One place for output: data goes to stdout, messages and progress to stderr.
//! `--json` prints one JSON object (or array) on stdout; `-q` silences progress.

use std::io::Write;

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    /// Colour human output (--color, NO_COLOR); never used for JSON.
    pub color: bool,
}

/// Styles for [`Printer::paint`]; the text reads the same without them.
#[derive(Debug, Clone, Copy)]
pub enum Style {
    Good,
    Note,
    Warn,
    Bad,
}

/// Wrap `text` in an ANSI colour when `color` is on.
pub fn paint(color: bool, style: Style, text: &str) -> String {
    if !color {
        return text.to_string();
    }
    let code = match style {
        Style::Good => "1;32",
        Style::Note => "36",
        Style::Warn => "33",
        Style::Bad => "1;31",
    };
    format!("\u{1b}[{code}m{text}\u{1b}[0m")
}

impl Printer {
    /// A progress message on stderr, unless quiet or printing JSON.
    pub fn progress(&self, message: &str) {
        if !self.quiet && !self.json {
            eprintln!("{message}");
        }
    }

    /// A progress bar on stderr over `len` steps; hidden unless stderr is a
    /// terminal and neither -q nor --json is given, so it never mixes with data.
    pub fn bar(&self, len: u64, message: &str) -> indicatif::ProgressBar {
        use std::io::IsTerminal;
        if self.quiet || self.json || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(len);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:>12} [{bar:32}] {pos}/{len} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        bar
    }

    /// A progress bar of bytes, with rate and ETA, for a download whose
    /// length is set when known (same rules as [`Printer::bar`]).
    pub fn download_bar(&self, message: &str) -> indicatif::ProgressBar {
        use std::io::IsTerminal;
        if self.quiet || self.json || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>12} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        bar
    }

    /// A spinner on stderr for a wait of unknown length (same rules as [`Printer::bar`]).
    pub fn spinner(&self, message: &str) -> indicatif::ProgressBar {
        use std::io::IsTerminal;
        if self.quiet || self.json || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_message(message.to_string());
        spinner.enable_steady_tick(std::time::Duration::from_millis(100));
        spinner
    }

    /// A warning on stderr: always shown (also with --json, where stdout stays JSON).
    pub fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }

    /// Print data: `human` as text, or `value` as JSON with --json.
    pub fn data<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        let text = if self.json {
            serde_json::to_string_pretty(value).expect("output serialises") + "\n"
        } else {
            human()
        };
        let mut out = std::io::stdout().lock();
        // A closed pipe (`release list | head`) is not an error.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}
