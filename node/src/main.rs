//! The `shoal` binary. Everything lives in the library (`src/lib.rs`), which the fuzz targets
//! in `fuzz/` link as well.

fn main() -> std::process::ExitCode {
    shoal_node::main()
}
