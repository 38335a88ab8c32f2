//! Writes the PTX of every kernel for one architecture to stdout, for the
//! resource report without a GPU:
//!   cargo run --release -p lhama-cuda --example dump_ptx -- compute_90a > k.ptx
//!   ptxas -arch=sm_90a -v k.ptx -o /dev/null   (registers, shared memory, spills)
//! NVRTC comes from the same place as for the tests (scripts/test.sh).

fn main() {
    let arch: &'static str = match std::env::args().nth(1).as_deref() {
        Some("compute_80") => "compute_80",
        None | Some("compute_90a") => "compute_90a",
        Some(other) => {
            eprintln!("unknown architecture {other:?}: compute_80 or compute_90a");
            std::process::exit(2);
        }
    };
    match lhama_cuda::compile::compile(arch) {
        Ok(ptx) => print!("{}", ptx.to_src()),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
