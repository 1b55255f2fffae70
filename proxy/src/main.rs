//! The `pgwarden` binary: parses arguments and hands over to [`pgwarden::cli`].

fn main() -> std::process::ExitCode {
    pgwarden::cli::main()
}
