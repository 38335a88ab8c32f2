//! The `lhama` binary end to end: synth, generate, bench, verify, and how
//! `--model` resolves local directories and Hugging Face repo ids offline.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn lhama(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(common::lhama_bin());
    cmd.args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN")
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

/// `generate` of 12 sampled tokens (seed 7) from a chat prompt of model `m`.
fn sampled_generate(m: &str) -> [&str; 13] {
    [
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
    ]
}

#[test]
fn generate_streams_text_and_reports_counts() {
    let dir = common::synth_tiny();
    let m = dir.path().to_str().unwrap();
    let args = sampled_generate(m);
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

/// Both CPU paths against the transformers goldens: the fast one (the
/// default: integer dot products for decode products) within its budget
/// (top-5 logprobs within 0.05 nats, 32 greedy steps identical), the exact
/// one within 1e-3 of every logit.
#[test]
fn verify_passes_against_the_committed_goldens() {
    let dir = common::synth_tiny();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/goldens/tiny.json");
    for (flags, precision) in [(&[][..], "fast"), (&["--precision", "exact"][..], "exact")] {
        let mut args = vec![
            "verify",
            "--model",
            dir.path().to_str().unwrap(),
            "--golden",
            golden.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let out = lhama(&args, &[]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        assert!(
            stdout.contains(&format!("backend: cpu, precision: {precision}")),
            "{stdout}"
        );
        assert!(
            stdout.contains("verify: ok (160 greedy steps identical)"),
            "{stdout}"
        );
    }
}

#[test]
fn bench_prints_prefill_and_decode_figures() {
    let dir = common::synth_tiny();
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt-len",
            "8",
            "--decode-steps",
            "2",
        ];
        args.extend_from_slice(extra);
        lhama(&args, &[])
    };
    let out = bench(&["--batch", "1,3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("prefill: 8 tokens"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '3']))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    // Packed prefill: 7 prompts of 8 tokens, 3 a pass (24 tokens), the last
    // pass taking the one left; a pass must hold a whole prompt.
    let out = bench(&[
        "--batch",
        "1",
        "--prefill-seqs",
        "7",
        "--prefill-tokens",
        "24",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("prefill: 7 prompts of 8 tokens, 3 a pass, in "),
        "{stdout}"
    );
    let out = bench(&[
        "--batch",
        "1",
        "--prefill-seqs",
        "2",
        "--prefill-tokens",
        "4",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--prefill-tokens must hold at least one prompt"),
        "{}",
        text(&out.stderr)
    );
    // The per-kernel profile is CUDA's: on the CPU a clear error, after the
    // figures it could measure.
    let out = bench(&["--batch", "1", "--profile"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--profile: the cpu backend has no kernel profile"),
        "{}",
        text(&out.stderr)
    );
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

/// A stand-in for the Hugging Face Hub on loopback: `/{repo}/resolve/main/{file}`
/// answers HEAD and GET for the files of `dir` (ETag, X-Repo-Commit,
/// Content-Length, as the Hub does) and 404 for others. Returns its address
/// and the request lines (with their Authorization header) it saw.
fn fake_hub(
    dir: std::path::PathBuf,
    repo: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if h.to_ascii_lowercase().starts_with("authorization:") {
                    auth = h.trim().to_string();
                }
            }
            log.lock().unwrap().push(format!("{} {auth}", line.trim()));
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let prefix = format!("/{repo}/resolve/main/");
            let file = path
                .strip_prefix(&prefix)
                .map(|f| dir.join(f))
                .filter(|f| f.is_file());
            let mut out = conn;
            match file {
                Some(f) => {
                    let body = std::fs::read(f).unwrap();
                    // Any stable per-content tag will do as the ETag.
                    let tag = body.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                        (h ^ b as u64).wrapping_mul(0x100000001b3)
                    });
                    let head = format!(
                        "HTTP/1.1 200 OK\r\netag: \"{tag:016x}\"\r\nx-repo-commit: {COMMIT}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = out.write_all(head.as_bytes());
                    if method == "GET" {
                        let _ = out.write_all(&body);
                    }
                }
                None => {
                    let _ = out.write_all(
                        format!("HTTP/1.1 404 Not Found\r\nx-repo-commit: {COMMIT}\r\nx-error-code: EntryNotFound\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                    );
                }
            }
        }
    });
    (addr, seen)
}

/// A Hub repo id is downloaded into the standard cache (HF_HOME) through the
/// Hub's resolve URLs, with HF_TOKEN sent and progress on stderr; a second
/// run offline finds it there.
#[test]
fn hub_ids_download_into_the_hf_cache() {
    let model = common::synth_tiny();
    let home = tempfile::tempdir().unwrap();
    let (addr, seen) = fake_hub(model.path().to_path_buf(), "lhama-test/tiny");
    let endpoint = std::path::PathBuf::from(format!("http://{addr}"));
    let args = [
        "generate",
        "--model",
        "lhama-test/tiny",
        "--prompt",
        "oi",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
    ];
    let out = lhama(
        &args,
        &[
            ("HF_ENDPOINT", endpoint.as_path()),
            ("HF_HOME", home.path()),
            ("HF_TOKEN", Path::new("hf_secret")),
        ],
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("generated tokens: "), "{err}");
    assert!(err.contains("downloading model.safetensors"), "{err}");
    let seen = seen.lock().unwrap().clone();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let get = format!(
            "GET /lhama-test/tiny/resolve/main/{file} HTTP/1.1 authorization: Bearer hf_secret"
        );
        assert!(
            seen.iter().any(|l| l.eq_ignore_ascii_case(&get)),
            "{seen:#?}"
        );
    }
    let snap = home
        .path()
        .join("hub/models--lhama-test--tiny/snapshots/0123456789abcdef0123456789abcdef01234567");
    for e in std::fs::read_dir(model.path()).unwrap() {
        let name = e.unwrap().file_name();
        assert_eq!(
            std::fs::read(snap.join(&name)).unwrap(),
            std::fs::read(model.path().join(&name)).unwrap(),
            "{name:?}"
        );
    }
    // Offline, from the cache just written; the fake Hub is not asked again.
    let before = seen.len();
    let out = lhama(
        &args,
        &[("HF_HUB_OFFLINE", Path::new("1")), ("HF_HOME", home.path())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(before, seen.len());
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

/// `LHAMA_CPU_ISA` caps the CPU kernels' instruction set: each level runs
/// (the bench says which kernels ran) and gives the same sampled text as
/// the CPU's own best, and a value that is not a level stops the program
/// with the variable named.
#[test]
fn the_cpu_isa_cap_picks_the_kernels_and_keeps_the_text() {
    let dir = common::synth_tiny();
    let m = dir.path().to_str().unwrap();
    let args = sampled_generate(m);
    let native = lhama(&args, &[]);
    assert!(native.status.success(), "{}", text(&native.stderr));
    for level in ["scalar", "avx2", "avx512"] {
        let out = lhama(&args, &[("LHAMA_CPU_ISA", Path::new(level))]);
        assert!(out.status.success(), "{level}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            text(&native.stdout),
            "LHAMA_CPU_ISA={level}"
        );
    }
    let out = lhama(
        &[
            "bench",
            "--model",
            m,
            "--prompt-len",
            "4",
            "--decode-steps",
            "1",
            "--batch",
            "1",
        ],
        &[("LHAMA_CPU_ISA", Path::new("scalar"))],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("CPU kernels: scalar (capped by LHAMA_CPU_ISA)"),
        "{stdout}"
    );
    let out = lhama(&args, &[("LHAMA_CPU_ISA", Path::new("avx3"))]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("LHAMA_CPU_ISA=\"avx3\"") && err.contains("scalar, avx2 or avx512"),
        "{err}"
    );
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

/// `lhama health` (the container's HEALTHCHECK): 0 and the body for a
/// serving server; non-zero with the reason for a refused connection or a
/// non-200 answer.
#[tokio::test]
async fn health_checks_a_server() {
    let server = common::start(&[]).await;
    let url = format!("{}/health", server.base);
    let out = lhama(&["health", "--url", &url], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"status\":\"ok\""),
        "{}",
        text(&out.stdout)
    );
    // A path the server answers 404.
    let out = lhama(
        &["health", "--url", &format!("{}/nothing", server.base)],
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    drop(server);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = lhama(
        &[
            "health",
            "--url",
            &format!("http://127.0.0.1:{port}/health"),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("connecting to"),
        "{}",
        text(&out.stderr)
    );
}
