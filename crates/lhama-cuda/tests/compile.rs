//! Every kernel compiles with NVRTC for sm_80 and sm_90a — on machines
//! without a GPU too. scripts/test.sh provides NVRTC (the PyPI wheels of the
//! CUDA 13.0 series, the one the device's driver accepts) and points
//! LD_LIBRARY_PATH and LHAMA_CUDA_INCLUDE at them.

use lhama_cuda::compile::{KERNELS, compile, compile_source, nvrtc_available, program_source};

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
        for k in KERNELS {
            assert!(
                text.contains(&format!(".entry {}(", k.name)),
                "{arch}: kernel {} missing from the PTX",
                k.name
            );
        }
    }
}

/// A kernel whose definition differs from its table entry does not compile:
/// the same source with one prototype changed (silu_mul_f32's `int splits`
/// declared a float) is refused by NVRTC.
#[test]
fn a_definition_that_differs_from_the_table_is_refused() {
    assert!(
        nvrtc_available(),
        "NVRTC (libnvrtc.so.13) is not loadable: run ./scripts/test.sh, which installs it from PyPI"
    );
    let src = program_source();
    let decl = "extern \"C\" __global__ void silu_mul_f32(const float*, int, float*, int, int);";
    assert!(src.contains(decl), "the prototype as the table writes it");
    let wrong = src.replacen(
        decl,
        "extern \"C\" __global__ void silu_mul_f32(const float*, float, float*, int, int);",
        1,
    );
    let err =
        compile_source("compute_90a", wrong).expect_err("a mismatched definition must not compile");
    assert!(err.to_string().contains("silu_mul_f32"), "{err}");
}
