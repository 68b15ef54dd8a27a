//! One place for output: data goes to stdout, messages and progress to stderr.
//! `--json` prints one JSON object (or array) on stdout; `-q` silences progress.

use std::io::Write;

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
}

impl Printer {
    /// A progress message on stderr, unless quiet or printing JSON.
    pub fn progress(&self, message: &str) {
        if !self.quiet && !self.json {
            eprintln!("{message}");
        }
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
