//! `basalt`, the image builder.

fn main() -> std::process::ExitCode {
    basalt::cli::main()
}
