//! The `lhama` binary end to end: synth, generate, bench, verify, and how
//! `--model` resolves local directories and Hugging Face repo ids offline.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn lhama(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(common::lhama_bin());
    cmd.args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("LHAMA_MODEL")
        .env("RUST_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run lhama")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn generate_streams_text_and_reports_counts() {
    let dir = common::synth_tiny();
    let m = dir.path().to_str().unwrap();
    let args = [
        "generate",
        "--model",
        m,
        "--prompt",
        "Qual a capital do Brasil?",
        "--chat",
        "--max-tokens",
        "12",
        "--temperature",
        "0.8",
        "--seed",
        "7",
        "--ignore-eos",
    ];
    let a = lhama(&args, &[]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let stderr = text(&a.stderr);
    assert!(
        stderr.contains("prompt tokens: 12, generated tokens: 12"),
        "{stderr}"
    );
    assert!(stderr.contains("tok/s"), "{stderr}");
    let b = lhama(&args, &[]);
    assert_eq!(a.stdout, b.stdout, "same seed, same text");
    let mut other = args.to_vec();
    other[10] = "8";
    let c = lhama(&other, &[]);
    assert_ne!(a.stdout, c.stdout, "another seed, other text");
}

#[test]
fn verify_passes_against_the_committed_goldens() {
    let dir = common::synth_tiny();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/goldens/tiny.json");
    let out = lhama(
        &[
            "verify",
            "--model",
            dir.path().to_str().unwrap(),
            "--golden",
            golden.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("verify: ok (160 greedy steps identical)"));
}

#[test]
fn bench_prints_prefill_and_decode_figures() {
    let dir = common::synth_tiny();
    let out = lhama(
        &[
            "bench",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt-len",
            "8",
            "--decode-steps",
            "2",
            "--batch",
            "1,3",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("prefill: 8 tokens"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '3']))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
}

#[test]
fn context_overflow_and_bad_model_paths_are_clear_errors() {
    let dir = common::synth_tiny();
    let out = lhama(
        &[
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "oi",
            "--max-tokens",
            "600",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("over the model's context of 512 tokens"),
        "{}",
        text(&out.stderr)
    );

    let out = lhama(
        &["generate", "--model", "./no/such/dir", "--prompt", "oi"],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no such directory"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn offline_hub_ids_fail_fast_with_a_hint() {
    let home = tempfile::tempdir().unwrap();
    let out = lhama(
        &[
            "generate",
            "--model",
            "someone/absent-model",
            "--prompt",
            "oi",
        ],
        &[("HF_HUB_OFFLINE", Path::new("1")), ("HF_HOME", home.path())],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("HF_HUB_OFFLINE is set"), "{err}");
    assert!(
        err.contains("point --model at a local model directory"),
        "{err}"
    );
}

#[test]
fn offline_hub_ids_resolve_from_the_hf_cache() {
    let model = common::synth_tiny();
    let home = tempfile::tempdir().unwrap();
    // The standard cache layout: hub/models--OWNER--NAME/{refs/main, snapshots/REV/...}
    let repo = home.path().join("hub/models--lhama-test--tiny");
    let snap = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    for e in std::fs::read_dir(model.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), snap.join(e.file_name())).unwrap();
    }
    let out = lhama(
        &[
            "generate",
            "--model",
            "lhama-test/tiny",
            "--prompt",
            "oi",
            "--max-tokens",
            "3",
            "--temperature",
            "0",
        ],
        &[("HF_HUB_OFFLINE", Path::new("1")), ("HF_HOME", home.path())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("generated tokens: "),
        "{}",
        text(&out.stderr)
    );
}

/// Logs written to a pipe or a file carry no terminal colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = common::synth_tiny();
    let out = Command::new(common::lhama_bin())
        .args(["bench", "--model"])
        .arg(dir.path())
        .args(["--prompt-len", "4", "--decode-steps", "1", "--batch", "1"])
        .env("RUST_LOG", "info")
        .output()
        .expect("run lhama");
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("model loaded"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in {err:?}");
}

/// A bad value from the environment names the variable, not only the flag.
#[test]
fn an_invalid_environment_value_names_the_variable() {
    let out = Command::new(common::lhama_bin())
        .args(["serve", "--model", "/nonexistent"])
        .env("LHAMA_PORT", "eighty")
        .output()
        .expect("run lhama");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--port") && err.contains("environment variable LHAMA_PORT"),
        "{err}"
    );
    // The same bad value as a flag says nothing of the environment.
    let out = Command::new(common::lhama_bin())
        .args(["serve", "--model", "/nonexistent", "--port", "eighty"])
        .env_remove("LHAMA_PORT")
        .output()
        .expect("run lhama");
    let err = text(&out.stderr);
    assert!(
        err.contains("--port") && !err.contains("LHAMA_PORT"),
        "{err}"
    );
}
