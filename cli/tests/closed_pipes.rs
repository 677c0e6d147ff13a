//! A closed stdout or stderr (`layerstream analyze | head`, a notebook cell gone away) ends
//! `analyze` and `score` quietly with their usual exit status, never a panic, and their
//! files are written as always (issue 23, part 4).

use std::process::{Command, Stdio};

fn run_with_closed(stream: &str, command: &str) {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layerstream"));
    cmd.args([
        command,
        "--device",
        "cpu",
        "--num-samples",
        "2",
        "--seq-len",
        "32",
        "--out",
        "out",
    ])
    .env("LAYERSTREAM_CACHE_DIR", home.path().join("cache"))
    .current_dir(home.path())
    .stdin(Stdio::null());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Close the read end before the command prints anything.
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let mut text = String::new();
    if stream == "stdout" {
        drop(out);
        let mut err = err;
        std::io::Read::read_to_string(&mut err, &mut text).unwrap();
    } else {
        drop(err);
        let mut out = out;
        std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{command} with {stream} closed: {status}: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    let file = if command == "analyze" {
        "report.json"
    } else {
        "score.json"
    };
    assert!(
        home.path().join("out").join(file).exists(),
        "{command}: {file}"
    );
}

#[test]
fn analyze_and_score_end_quietly_when_stdout_or_stderr_is_closed() {
    for command in ["analyze", "score"] {
        for stream in ["stdout", "stderr"] {
            run_with_closed(stream, command);
        }
    }
}
