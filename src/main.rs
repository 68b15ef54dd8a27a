fn main() -> std::process::ExitCode {
    release::run().into()
}
