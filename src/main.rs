//! The `freeim` binary: the gateway node, the operator CLI and the tools, on the library.

mod cli;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options, read before `main`: a background thread returns freed pages to the
/// system within about a second. Without it, a node whose 19k sockets disconnect at once
/// keeps ~120 MB resident; with it, it goes back to ~20 MB (measured by `freeim bench`).
#[cfg(all(not(target_env = "msvc"), target_os = "linux"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 43] = b"background_thread:true,dirty_decay_ms:1000\0";

fn main() -> std::process::ExitCode {
    cli::main()
}
