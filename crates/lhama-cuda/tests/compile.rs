//! Every kernel compiles with NVRTC for sm_80 and sm_90a — on machines
//! without a GPU too. scripts/test.sh provides NVRTC (the PyPI wheels of the
//! CUDA 13.0 series, the one the device's driver accepts) and points
//! LD_LIBRARY_PATH and LHAMA_CUDA_INCLUDE at them.

use lhama_cuda::compile::{KERNELS, compile, nvrtc_available};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90a() {
    assert!(
        nvrtc_available(),
        "NVRTC (libnvrtc.so.13) is not loadable: run ./scripts/test.sh, which installs it from PyPI"
    );
    for arch in ["compute_80", "compute_90a"] {
        let ptx = compile(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let text = ptx.to_src();
        assert!(
            text.contains(&format!(".target {}", arch.replace("compute", "sm"))),
            "{arch}: wrong target"
        );
        for name in KERNELS {
            assert!(
                text.contains(&format!(".entry {name}(")),
                "{arch}: kernel {name} missing from the PTX"
            );
        }
    }
}
