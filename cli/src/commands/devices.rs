//! `analyze --devices 0,1 | all`: one ordinary shard process per GPU (`--shard i/N` with its
//! own `CUDA_VISIBLE_DEVICES`, `--out OUT/shards/shard-i`, the host budget `--ram` divided
//! among them), a child that dies started again (it resumes from its checkpoints), one
//! combined progress line from the shards' progress.json, and the shards merged into OUT at
//! the end. The page cache is shared, so the weights are read from disk once per host.

use super::merge::merge_into;
use crate::args::{AnalyzeArgs, MergeArgs};
use anyhow::{Context, Result, bail};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Times a shard process is started again after it died before giving up.
const RESTARTS: usize = 3;

/// The devices `--devices` names: a list of indices, or `all` (every GPU the driver sees).
pub fn parse_devices(text: &str) -> Result<Vec<String>> {
    if text == "all" {
        let count = layerstream_runtime::gpu_count()
            .context("--devices all: cannot count the GPUs; name them (--devices 0,1)")?;
        if count == 0 {
            bail!("--devices all: the driver sees no GPU; name them, or drop --devices");
        }
        return Ok((0..count).map(|d| d.to_string()).collect());
    }
    let devices: Vec<String> = text.split(',').map(|d| d.trim().to_string()).collect();
    if devices.iter().any(|d| d.parse::<usize>().is_err()) {
        bail!("--devices {text}: expected GPU indices (0,1) or all");
    }
    let mut unique = devices.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != devices.len() {
        bail!("--devices {text}: a GPU is named twice");
    }
    Ok(devices)
}

/// This process's arguments without the flags a shard gets its own values for.
fn child_arguments(drop: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let name = arg.split('=').next().unwrap_or("").to_string();
        if drop.contains(&name.as_str()) {
            if !arg.contains('=') {
                args.next();
            }
            continue;
        }
        out.push(arg);
    }
    out
}

struct Shard {
    index: usize,
    device: String,
    out: PathBuf,
    child: Option<Child>,
    restarts: usize,
    done: bool,
}

/// Runs `analyze` as one shard per device and merges them into `args.run.out`.
pub fn analyze_on_devices(args: &AnalyzeArgs, devices: &str) -> Result<()> {
    if args.workload.shard.is_some() {
        bail!(
            "--devices runs its own shards (one per GPU); drop --shard, or run shards without --devices"
        );
    }
    if args.dry_run {
        bail!("--devices with --dry-run: plan one shard with --shard 0/N --dry-run instead");
    }
    let devices = parse_devices(devices)?;
    let out = args.run.out.clone();
    let _lock = super::prepare_out_dir(&out)?;
    // Opened once here: a model id is resolved (and with --download fetched) before the
    // shards start, so they find it in the cache instead of downloading it side by side.
    super::open_model(&args.model, crate::hub_download::Need::Run)?;
    let count = devices.len();
    let common = child_arguments(&["--devices", "--out", "--ram"]);
    let ram = args.plan.ram.map(|r| r.0 / count as u64);
    let mut shards: Vec<Shard> = devices
        .iter()
        .enumerate()
        .map(|(index, device)| Shard {
            index,
            device: device.clone(),
            out: out.join("shards").join(format!("shard-{index}")),
            child: None,
            restarts: 0,
            done: false,
        })
        .collect();
    eprintln!(
        "{count} shards on GPUs {} (each its own process; logs in {}/shards/)",
        devices.join(", "),
        out.display()
    );
    let start = |shard: &Shard| -> Result<Child> {
        std::fs::create_dir_all(&shard.out)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(shard.out.with_extension("log"))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(&common)
            .args(["--shard", &format!("{}/{count}", shard.index)])
            .arg("--out")
            .arg(&shard.out)
            .env("CUDA_VISIBLE_DEVICES", &shard.device)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        if let Some(ram) = ram {
            command.args(["--ram", &ram.to_string()]);
        }
        Ok(command.spawn()?)
    };
    for shard in &mut shards {
        shard.child = Some(start(shard)?);
    }
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    while shards.iter().any(|s| !s.done) {
        if layerstream_runtime::stop::stop_requested().is_some() {
            for shard in &mut shards {
                if let Some(child) = &mut shard.child {
                    let _ = child.kill();
                }
            }
            bail!("stopped; the same command continues every shard where it stopped");
        }
        let mut failed = None;
        for shard in &mut shards {
            let Some(child) = &mut shard.child else {
                continue;
            };
            let Some(status) = child.try_wait()? else {
                continue;
            };
            shard.child = None;
            if status.success() {
                shard.done = true;
                continue;
            }
            if shard.restarts == RESTARTS {
                let log = shard.out.with_extension("log");
                failed = Some(format!(
                    "shard {} (GPU {}) failed {} times ({status}); see {}",
                    shard.index,
                    shard.device,
                    RESTARTS + 1,
                    log.display()
                ));
                break;
            }
            shard.restarts += 1;
            eprintln!(
                "shard {} (GPU {}) ended ({status}); starting it again (it resumes), restart {} of {RESTARTS}",
                shard.index, shard.device, shard.restarts
            );
            shard.child = Some(start(shard)?);
        }
        if let Some(failure) = failed {
            for other in shards.iter_mut().filter_map(|s| s.child.as_mut()) {
                let _ = other.kill();
            }
            bail!(failure);
        }
        let line = progress_line(&shards);
        if line != last_line {
            match terminal {
                true => eprint!("\r{line}"),
                false => eprintln!("{line}"),
            }
            let _ = std::io::stderr().flush();
            last_line = line;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if terminal {
        eprintln!();
    }
    merge_into(&MergeArgs {
        shards: shards.iter().map(|s| s.out.clone()).collect(),
        out,
        partial: false,
        model: args.model.model.clone(),
    })
}

/// `shards: 0 4/12 layers, 1 done`, from each shard's progress.json.
fn progress_line(shards: &[Shard]) -> String {
    let parts: Vec<String> = shards
        .iter()
        .map(|s| match s.done {
            true => format!("{} done", s.index),
            false => format!("{} {}", s.index, layers_done(&s.out)),
        })
        .collect();
    format!("shards: {}", parts.join(", "))
}

fn layers_done(dir: &Path) -> String {
    let progress: Option<serde_json::Value> = std::fs::read(dir.join("progress.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match progress {
        None => "starting".into(),
        Some(p) => {
            let done = p["layers"].as_object().map_or(0, |l| l.len());
            let all = p["requested_layers"].as_array().map_or(0, |l| l.len());
            format!("{done}/{all} layers")
        }
    }
}
