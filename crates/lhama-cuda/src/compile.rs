//! Kernel sources (kernels/*.cu, embedded in the binary) and their compilation
//! to PTX with NVRTC, loaded at run time: one binary serves machines with and
//! without CUDA, and the PTX targets exactly the GPU found (sm_80 or sm_90a).

use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::CudaError;

/// Every kernel family, in the order they are concatenated after common.cuh.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "embedding.cu",
        include_str!("../../../kernels/embedding.cu"),
    ),
    ("rmsnorm.cu", include_str!("../../../kernels/rmsnorm.cu")),
    (
        "activation.cu",
        include_str!("../../../kernels/activation.cu"),
    ),
    ("awq.cu", include_str!("../../../kernels/awq.cu")),
    ("rope_kv.cu", include_str!("../../../kernels/rope_kv.cu")),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    ("lm_head.cu", include_str!("../../../kernels/lm_head.cu")),
    ("gemm_mma.cu", include_str!("../../../kernels/gemm_mma.cu")),
    ("gemv_mma.cu", include_str!("../../../kernels/gemv_mma.cu")),
    (
        "gemm_frag.cu",
        include_str!("../../../kernels/gemm_frag.cu"),
    ),
    (
        "gemm_wgmma.cu",
        include_str!("../../../kernels/gemm_wgmma.cu"),
    ),
    (
        "attention_mma.cu",
        include_str!("../../../kernels/attention_mma.cu"),
    ),
    ("sampling.cu", include_str!("../../../kernels/sampling.cu")),
];

const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// One kernel: its name and its parameters' C types, in order.
pub struct Kernel {
    pub name: &'static str,
    pub params: &'static [&'static str],
}

impl Kernel {
    const fn new(name: &'static str, params: &'static [&'static str]) -> Self {
        Self { name, params }
    }
}

// Parameter types, as the kernels declare them.
const F: &str = "const float*";
const FM: &str = "float*";
const U: &str = "const unsigned*";
const UM: &str = "unsigned*";
const H: &str = "const __half*";
const HM: &str = "__half*";
const U4: &str = "const uint4*";
const SP: &str = "const SampleParams*";
const I: &str = "int";
const R: &str = "float";

/// Parameters of the f32 GEMV (awq.cu), plain and SiLU.
const GEMV: &[&str] = &[F, U, F, F, FM, FM, UM, I, I, I, I, I];
/// Parameters of the tensor-core GEMV (gemv_mma.cu).
const GEMV_MMA: &[&str] = &[F, U4, F, F, FM, FM, UM, I, I, I, I, I];
/// Parameters of the f32-staged tensor-core GEMM (gemm_mma.cu).
const GEMM: &[&str] = &[F, U, F, F, FM, I, I, I, I, I];
/// Parameters of the fragment GEMM (gemm_frag.cu).
const GEMM_FRAG: &[&str] = &[F, U4, F, F, FM, I, I, I, I, I];
/// Parameters of decode attention on the f32 cache (LHAMA_DECODE_PARAMS(float)).
const DECODE_F32: &[&str] = &[
    F, U, F, F, U, FM, FM, U, U, FM, UM, FM, I, I, I, I, I, I, R, I,
];
/// Parameters of decode attention on the f16 cache (LHAMA_DECODE_PARAMS(__half)).
const DECODE_F16: &[&str] = &[
    F, U, F, F, U, HM, HM, U, U, FM, UM, FM, I, I, I, I, I, I, R, I,
];
/// Parameters of prompt-step attention on the f32 cache (LHAMA_PREFILL_PARAMS(float)).
const PREFILL_F32: &[&str] = &[F, F, F, U, U, U, U, FM, I, I, I, I, I, I, R];
/// Parameters of prompt-step attention on the f16 cache (LHAMA_PREFILL_PARAMS(__half);
/// attention_mma.cu's kernels take the same).
const PREFILL_F16: &[&str] = &[F, H, H, U, U, U, U, FM, I, I, I, I, I, I, R];
/// Parameters of the lm_head, warp per row and tensor-core.
const LM_HEAD: &[&str] = &[F, U, H, FM, I, I, I];

/// Every `extern "C"` kernel the backend loads, with its parameters: the one
/// table of kernel names and argument lists. The NVRTC source declares each
/// as a prototype from it (`prototypes`), so a kernel whose definition
/// differs fails to compile, and every launch is checked against it
/// (`kernels::Args`: the count, and pointer / int / float at each place).
pub const KERNELS: &[Kernel] = &[
    Kernel::new("embedding_gather_f16_f32", &[H, U, FM, I]),
    Kernel::new("add_rmsnorm_f32", &[FM, F, I, F, FM, I, R]),
    Kernel::new("add_rmsnorm_wide_f32", &[FM, F, I, F, FM, I, R]),
    Kernel::new("silu_mul_f32", &[F, I, FM, I, I]),
    Kernel::new("awq_gemv_partial_m1_f32", GEMV),
    Kernel::new("awq_gemv_partial_m2_f32", GEMV),
    Kernel::new("awq_gemv_partial_m4_f32", GEMV),
    Kernel::new("awq_gemv_partial_m8_f32", GEMV),
    Kernel::new("awq_gemv_silu_m1_f32", GEMV),
    Kernel::new("awq_gemv_silu_m2_f32", GEMV),
    Kernel::new("awq_gemv_silu_m4_f32", GEMV),
    Kernel::new("awq_gemv_silu_m8_f32", GEMV),
    Kernel::new("awq_gemv_cluster_m1_f32", GEMV),
    Kernel::new("awq_gemv_cluster_m2_f32", GEMV),
    Kernel::new("awq_reduce_partials_f32", &[F, FM, I, I, I]),
    Kernel::new("rope_kv_write_f32", &[F, U, F, F, U, FM, FM, FM, I, I, I]),
    Kernel::new("rope_kv_write_f16kv", &[F, U, F, F, U, FM, HM, HM, I, I, I]),
    Kernel::new("paged_attention_combine_f32", &[F, U, FM, I, I, I]),
    Kernel::new("paged_attention_decode_f32_d32", DECODE_F32),
    Kernel::new("paged_attention_decode_f32_d64", DECODE_F32),
    Kernel::new("paged_attention_decode_f32_d128", DECODE_F32),
    Kernel::new("paged_attention_decode_f16kv_d32", DECODE_F16),
    Kernel::new("paged_attention_decode_f16kv_d64", DECODE_F16),
    Kernel::new("paged_attention_decode_f16kv_d128", DECODE_F16),
    Kernel::new("paged_attention_decode1_f32_d32", DECODE_F32),
    Kernel::new("paged_attention_decode1_f32_d64", DECODE_F32),
    Kernel::new("paged_attention_decode1_f32_d128", DECODE_F32),
    Kernel::new("paged_attention_decode1_f16kv_d32", DECODE_F16),
    Kernel::new("paged_attention_decode1_f16kv_d64", DECODE_F16),
    Kernel::new("paged_attention_decode1_f16kv_d128", DECODE_F16),
    Kernel::new("paged_attention_prefill_f32", PREFILL_F32),
    Kernel::new("paged_attention_prefill_f16kv", PREFILL_F16),
    Kernel::new("lm_head_f16_f32", LM_HEAD),
    Kernel::new("lm_head_rows_f16_f32", LM_HEAD),
    Kernel::new("awq_gemm_mma_f32", GEMM),
    Kernel::new("awq_gemm_mma_f16x", GEMM),
    Kernel::new("lm_head_mma_f16_f32", LM_HEAD),
    Kernel::new("awq_gemv_mma_f16x", GEMV_MMA),
    Kernel::new("awq_gemv_mma_silu_f16x", GEMV_MMA),
    Kernel::new("awq_gemm_frag64_s2_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_frag64_s3_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_frag64_s4_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_frag128_s2_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_frag64_cluster_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_wgmma16_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_wgmma32_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_wgmma64_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_wgmma128_f16x", GEMM_FRAG),
    Kernel::new("awq_gemm_wgmma_wide_f16x", GEMM_FRAG),
    Kernel::new("paged_attention_prefill_mma_f16kv_d32", PREFILL_F16),
    Kernel::new("paged_attention_prefill_mma_f16kv_d64", PREFILL_F16),
    Kernel::new("paged_attention_prefill_mma_f16kv_d128", PREFILL_F16),
    Kernel::new("sample_rows_f32", &[F, SP, UM, I, FM, UM, UM]),
    Kernel::new("apply_token_masks", &[FM, U, I, I]),
];

/// The whole program: common helpers, then each family with a line marker so
/// compiler messages name the original file.
pub fn program_source() -> String {
    let mut src = String::from("// Shared with the host (lhama_cuda::kernels::shared_defines).\n");
    for (name, value) in crate::kernels::shared_defines() {
        src.push_str(&format!("#define {name} {value}\n"));
    }
    src.push_str("#line 1 \"common.cuh\"\n");
    src.push_str(COMMON);
    src.push_str(&prototypes());
    for (name, body) in SOURCES {
        src.push_str(&format!("\n#line 1 \"{name}\"\n"));
        src.push_str(body);
    }
    src
}

/// The prototype of every kernel in KERNELS, for the NVRTC source (after
/// common.cuh, before the kernel files).
pub fn prototypes() -> String {
    let mut src = String::from(
        "\n// Generated from lhama_cuda::compile::KERNELS: each definition must match.\nstruct SampleParams;\n",
    );
    for k in KERNELS {
        src.push_str(&format!(
            "extern \"C\" __global__ void {}({});\n",
            k.name,
            k.params.join(", ")
        ));
    }
    src
}

/// Folder with cuda_fp16.h: LHAMA_CUDA_INCLUDE, else $CUDA_HOME/include or
/// $CUDA_PATH/include, else /usr/local/cuda/include.
pub fn include_dir() -> String {
    if let Ok(dir) = std::env::var("LHAMA_CUDA_INCLUDE") {
        return dir;
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = std::env::var(var) {
            return format!("{root}/include");
        }
    }
    "/usr/local/cuda/include".to_string()
}

/// NVRTC target for a compute capability: Hopper gets sm_90a features.
pub fn arch_for(major: i32, minor: i32) -> Option<&'static str> {
    match (major, minor) {
        (9, 0) => Some("compute_90a"),
        (8, 0) => Some("compute_80"),
        (8, 6) => Some("compute_86"),
        (8, 9) => Some("compute_89"),
        (m, _) if m >= 10 => Some("compute_90"),
        _ => None,
    }
}

/// Whether the NVRTC library can be loaded at all.
pub fn nvrtc_available() -> bool {
    // SAFETY: only probes for the shared library; nothing is called in it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles every kernel for `arch` (e.g. "compute_90a").
pub fn compile(arch: &'static str) -> Result<Ptx, CudaError> {
    compile_source(arch, program_source())
}

/// Compiles `src` (a variant of `program_source`, for tests) for `arch`.
pub fn compile_source(arch: &'static str, src: String) -> Result<Ptx, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let opts = CompileOptions {
        arch: Some(arch),
        include_paths: vec![include_dir()],
        options: vec!["--std=c++17".into()],
        name: Some("lhama_kernels.cu".into()),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| CudaError::Compile(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shared constant is defined once, by the host, and no kernel
    /// file defines (or overrides) one of them itself.
    #[test]
    fn shared_constants_come_from_the_host_only() {
        let files = SOURCES
            .iter()
            .copied()
            .chain(std::iter::once(("common.cuh", COMMON)));
        for (file, body) in files {
            for (name, _) in crate::kernels::shared_defines() {
                assert!(
                    !body.contains(&format!("#define {name} "))
                        && !body.contains(&format!("#undef {name}")),
                    "{file} defines {name}, which the host provides"
                );
            }
        }
        let src = program_source();
        for (name, value) in crate::kernels::shared_defines() {
            assert_eq!(
                src.matches(&format!("#define {name} ")).count(),
                1,
                "{name}"
            );
            assert!(src.contains(&format!("#define {name} {value}\n")));
        }
    }

    /// The source declares every kernel once from the table, before the
    /// kernel files define it, and defines each exactly once.
    #[test]
    fn every_kernel_is_declared_from_the_table() {
        let src = program_source();
        let protos = src
            .find("Generated from lhama_cuda::compile::KERNELS")
            .expect("prototypes");
        let first_file = src.find("#line 1 \"embedding.cu\"").expect("kernel files");
        assert!(protos < first_file);
        for k in KERNELS {
            let decl = format!(
                "extern \"C\" __global__ void {}({});",
                k.name,
                k.params.join(", ")
            );
            assert_eq!(src.matches(&decl).count(), 1, "{}", k.name);
        }
        let mut names: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KERNELS.len(), "a kernel is in the table twice");
    }

    /// Every kernel the launchers load by a literal name is in KERNELS (the
    /// profile's names come from it: a missing one shows as "?").
    #[test]
    fn every_loaded_kernel_is_named() {
        let launchers = include_str!("kernels.rs");
        let mut seen = 0;
        for piece in launchers.split("f(\"").skip(1) {
            let name = &piece[..piece.find('"').expect("a closing quote")];
            assert!(
                KERNELS.iter().any(|k| k.name == name),
                "{name} is loaded but not in KERNELS"
            );
            seen += 1;
        }
        assert!(seen > 20, "only {seen} literal loads found");
    }
}
