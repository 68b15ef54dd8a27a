//! The binary: everything is in the library (`release::run`); this only turns
//! its exit code into the process's.

fn main() -> std::process::ExitCode {
    release::run().into()
}
