//! Which instruction sets the CPU kernels may use: what the CPU has, capped
//! by `LHAMA_CPU_ISA` (`scalar`, `avx2` or `avx512`; unset: all the CPU has).
//!
//! The cap lets one machine stand in for a smaller one (an AVX-512 server
//! measured as the AVX2-only CPUs many users have) and lets an operator keep
//! a fleet of mixed CPUs on one code path. Every version computes the same
//! bits (the unit tests compare them), so the cap changes speed only.
//! Each kernel family still checks the exact features it needs (FMA, F16C,
//! VNNI, AMX) on top of the level it belongs to.

/// A level of instruction set, in the order they include each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, no intrinsics.
    Scalar,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 (F, BW, VNNI, VBMI as each kernel needs) and AMX.
    Avx512,
}

/// The environment variable that caps the level.
pub const ENV: &str = "LHAMA_CPU_ISA";

/// Parses a value of `LHAMA_CPU_ISA`.
pub fn parse(value: &str) -> Result<Isa, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "scalar" => Ok(Isa::Scalar),
        "avx2" => Ok(Isa::Avx2),
        "avx512" => Ok(Isa::Avx512),
        other => Err(format!(
            "{ENV}={other:?}: expected scalar, avx2 or avx512 (or leave it unset for all the CPU has)"
        )),
    }
}

/// The cap the environment sets: None when unset; an error for a value that
/// is not a level (the backend's constructors report it, see [`check_env`]).
fn from_env() -> Result<Option<Isa>, String> {
    match std::env::var(ENV) {
        Ok(v) => parse(&v).map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{ENV} is not valid UTF-8")),
    }
}

/// Fails with a message naming the variable when `LHAMA_CPU_ISA` is set to
/// something that is not a level. Called where a CPU backend is built, so a
/// typo stops the program instead of silently running another code path.
pub fn check_env() -> Result<(), String> {
    from_env().map(|_| ())
}

/// The highest level the kernels may use (an invalid cap counts as none;
/// [`check_env`] has reported it before any kernel runs).
pub fn cap() -> Isa {
    static CAP: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| from_env().ok().flatten().unwrap_or(Isa::Avx512))
}

/// Whether kernels of `level` may run (the CPU's own features are checked
/// by each kernel family besides).
pub fn allows(level: Isa) -> bool {
    level <= cap()
}

/// The kernels this process runs, for logs and benchmark records, for
/// example "avx512 (vnni, amx)" or "avx2 (capped by LHAMA_CPU_ISA)".
pub fn describe() -> String {
    let mut notes: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    let level = {
        if crate::int8::vnni_available() {
            notes.push("vnni".into());
        }
        if crate::int8::amx_available() {
            notes.push("amx".into());
        }
        if crate::avx512::available() {
            "avx512"
        } else if crate::kernels::avx2_available() {
            "avx2"
        } else {
            "scalar"
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let level = "scalar";
    if std::env::var_os(ENV).is_some() {
        notes.push(format!("capped by {ENV}"));
    }
    if notes.is_empty() {
        level.to_string()
    } else {
        format!("{level} ({})", notes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(parse("scalar"), Ok(Isa::Scalar));
        assert_eq!(parse("AVX2"), Ok(Isa::Avx2));
        assert_eq!(parse(" avx512 "), Ok(Isa::Avx512));
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
    }

    #[test]
    fn a_bad_level_names_the_variable_and_the_choices() {
        let e = parse("avx3").unwrap_err();
        assert!(e.contains("LHAMA_CPU_ISA") && e.contains("\"avx3\""), "{e}");
        assert!(e.contains("scalar, avx2 or avx512"), "{e}");
        assert!(parse("").is_err());
    }
}
