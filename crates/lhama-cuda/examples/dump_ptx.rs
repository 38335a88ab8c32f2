//! Writes the kernels' PTX for an architecture (default compute_90a), for
//! reading the compiler's resource report with `ptxas -v`.
fn main() {
    let arch: &'static str = match std::env::args().nth(1).as_deref() {
        Some("compute_80") => "compute_80",
        _ => "compute_90a",
    };
    match lhama_cuda::compile::compile(arch) {
        Ok(ptx) => print!("{}", ptx.to_src()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
