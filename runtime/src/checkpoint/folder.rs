//! An analysis output folder (DESIGN §6): what is finished, what to do next, and the
//! observer that writes each layer's files as it finishes.
//!
//! Order of writes per finished layer, each atomic: the layer's summary and statistics, the
//! hidden states after it, then `progress.json` (the only file that says what is done), then
//! the previous hidden-state file is deleted. A kill between any two leaves a folder whose
//! progress.json names only complete, checksummed files.

use super::files::{
    hidden_source, layer_json_path, layer_statistics_path, read_layer_report, write_file,
};
use super::layer_record::read_layer_records;
use super::ownership::{
    is_run_file_name, refuse_foreign_folder, remove_recorded_files, remove_run_temp_files,
};
use super::statistics_file::read_statistics;
use super::writer::CheckpointObserver;
use crate::analysis::massive_report::TokenInfo;
use crate::analysis::report::{
    ActivationReport, AnalysisSettings, ReportData, ReportModel, assemble_report,
};
use crate::cpu::threads::{default_thread_count, for_each_chunk_mut};
use crate::error::{Result, RuntimeError};
use crate::executor::StartPoint;
use crate::sequences::Sequences;
use layerstream_planner::progress::{
    FileProblem, FileRecord, PROGRESS_SCHEMA_VERSION, Progress, identity_differences, unix_now,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The progress file's name.
pub const PROGRESS_FILE: &str = "progress.json";

/// What identifies a run: everything that changes results.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    /// See [`super::model_fingerprint`].
    pub model_fingerprint: String,
    /// Digests of sampled weight bytes per part of the model (see [`super::ModelFingerprint`]).
    pub weight_digests: BTreeMap<String, String>,
    /// For messages.
    pub model_name: String,
    /// See [`super::data_fingerprint`].
    pub data_fingerprint: String,
    /// For messages.
    pub data_name: String,
    /// Result-changing settings as text (threshold, points, shape, arithmetic...).
    pub settings: BTreeMap<String, String>,
    /// How it runs (micro-batch, backend details): recorded, never compared.
    pub plan: BTreeMap<String, String>,
}

/// Choices about an existing folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct FolderOptions {
    /// Delete what a previous run left and start over.
    pub restart: bool,
    /// Keep every hidden-state checkpoint, not only the latest.
    pub keep_hidden: bool,
}

/// An opened output folder.
pub struct AnalysisFolder {
    dir: PathBuf,
    progress: Progress,
    keep_hidden: bool,
    /// Lines for the user: what was found, what will be recomputed.
    pub notes: Vec<String>,
}

/// What progress.json says, if anything.
enum PreviousProgress {
    /// No progress.json.
    Missing,
    /// There but not readable as a progress record (the reason).
    Unreadable(String),
    /// Read.
    Read(Box<Progress>),
}

fn read_progress(dir: &Path) -> Result<PreviousProgress> {
    let path = dir.join(PROGRESS_FILE);
    if !path.exists() {
        return Ok(PreviousProgress::Missing);
    }
    // A folder or a file without read permission in its place: the user must look.
    let text = std::fs::read(&path).map_err(|e| RuntimeError::io("cannot read", &path, e))?;
    Ok(match serde_json::from_slice::<Progress>(&text) {
        Ok(progress) => PreviousProgress::Read(Box::new(progress)),
        Err(e) => PreviousProgress::Unreadable(e.to_string()),
    })
}

impl AnalysisFolder {
    /// Opens `dir` for the run `identity` asks for, resuming what a previous run of the same
    /// identity finished, or refusing with what differs.
    pub fn open(
        dir: &Path,
        identity: RunIdentity,
        requested_layers: &BTreeSet<usize>,
        num_layers: usize,
        options: FolderOptions,
    ) -> Result<Self> {
        let now = unix_now();
        let fresh = Progress {
            schema_version: PROGRESS_SCHEMA_VERSION,
            model_fingerprint: identity.model_fingerprint,
            weight_digests: identity.weight_digests,
            model_name: identity.model_name,
            data_fingerprint: identity.data_fingerprint,
            data_name: identity.data_name,
            settings: identity.settings,
            plan: identity.plan,
            requested_layers: requested_layers.iter().copied().collect(),
            num_layers,
            layers: BTreeMap::new(),
            times_computed: BTreeMap::new(),
            hidden: Vec::new(),
            outputs: Vec::new(),
            runs: 1,
            started_unix: now,
            updated_unix: now,
        };
        let mut notes = Vec::new();
        let progress = match (options.restart, read_progress(dir)?) {
            (true, previous) => {
                restart(dir, previous)?;
                fresh
            }
            (false, PreviousProgress::Read(old)) => {
                check_same_run(dir, &old, &fresh)?;
                resume(dir, *old, fresh, &mut notes)
            }
            (false, PreviousProgress::Missing) => recover(dir, fresh, None, &mut notes)?,
            (false, PreviousProgress::Unreadable(why)) => {
                recover(dir, fresh, Some(why), &mut notes)?
            }
        };
        let folder = AnalysisFolder {
            dir: dir.to_path_buf(),
            progress,
            keep_hidden: options.keep_hidden,
            notes,
        };
        folder.remove_stray_files();
        folder.save_progress()?;
        Ok(folder)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The progress record.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Requested layers whose results are not finished.
    pub fn layers_to_compute(&self, requested: &BTreeSet<usize>) -> BTreeSet<usize> {
        requested
            .iter()
            .copied()
            .filter(|l| !self.progress.layers.contains_key(l))
            .collect()
    }

    /// Where to start so that `to_compute` can be computed: after the latest kept hidden
    /// states that come before its first layer, or from the embeddings. Hidden states are
    /// checked against their record here, when they are about to be used (not when the folder
    /// is opened: a finished run's re-run reads none of them); damaged or missing ones are
    /// dropped with a note in `notes`, and the next earlier ones tried.
    pub fn start_point(
        &mut self,
        to_compute: &BTreeSet<usize>,
        tokens: usize,
        width: usize,
        notes: &mut Vec<String>,
    ) -> Result<Option<StartPoint>> {
        let Some(&first) = to_compute.first() else {
            return Ok(None);
        };
        loop {
            let best = self
                .progress
                .hidden
                .iter()
                .enumerate()
                .filter(|(_, h)| h.after_layer < first)
                .max_by_key(|(_, h)| h.after_layer)
                .map(|(index, _)| index);
            let Some(index) = best else {
                return Ok(None);
            };
            let record = &self.progress.hidden[index];
            match record.file.verify(&self.dir) {
                Ok(()) => {
                    return Ok(Some(StartPoint {
                        first_layer: record.after_layer + 1,
                        hidden_states: hidden_source(&self.dir, &record.file.path, tokens, width)?,
                    }));
                }
                Err(problem) => {
                    notes.push(format!(
                        "{} {}; not resuming from it",
                        record.file.path,
                        describe(problem)
                    ));
                    self.progress.hidden.remove(index);
                }
            }
        }
    }

    /// The observer that records each finished layer of a workload of sequences `rows` (on a
    /// writer thread). Hidden states are written when `hidden_interval` has passed since the
    /// last ones (zero: after every layer); layer results after every layer.
    pub fn observer(
        &mut self,
        hidden_width: usize,
        rows: Sequences,
        hidden_interval: Duration,
    ) -> CheckpointObserver<'_> {
        CheckpointObserver::new(self, hidden_width, rows, hidden_interval)
    }

    /// Assembles report.json from the finished layers' files, one layer at a time (so a
    /// resumed run and an uninterrupted one produce the same bytes) and writes it.
    pub fn write_report(
        &self,
        model: ReportModel,
        data: ReportData,
        settings: AnalysisSettings,
        tokens: &TokenInfo,
    ) -> Result<(PathBuf, ActivationReport)> {
        let layers = &self.progress.requested_layers;
        let report = assemble_report(model, data, settings, layers, tokens, |layer| {
            let summary = read_layer_report(&self.dir, &layer_json_path(layer))?;
            let statistics = read_statistics(&self.dir.join(layer_statistics_path(layer)))?;
            Ok((summary, statistics))
        })?;
        let json = serde_json::to_vec_pretty(&report).expect("report serialises");
        write_file(&self.dir, "report.json", &json)?;
        Ok((self.dir.join("report.json"), report))
    }

    fn save_progress(&self) -> Result<()> {
        save_progress(&self.dir, &self.progress)
    }

    pub(super) fn keep_hidden(&self) -> bool {
        self.keep_hidden
    }

    pub(super) fn set_progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    /// Records the files written from the finished layers (report.json, report.md, plots)
    /// as the run's own.
    pub fn record_outputs(&mut self, outputs: impl IntoIterator<Item = String>) -> Result<()> {
        let mut all: BTreeSet<String> = self.progress.outputs.iter().cloned().collect();
        all.extend(outputs);
        self.progress.outputs = all.into_iter().collect();
        self.save_progress()
    }

    /// Deletes temp files of killed writes and hidden states progress.json does not name.
    fn remove_stray_files(&self) {
        remove_run_temp_files(&self.dir);
        let named: BTreeSet<String> = self
            .progress
            .hidden
            .iter()
            .map(|h| h.file.path.clone())
            .collect();
        let Ok(entries) = std::fs::read_dir(self.dir.join("hidden")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_run_file_name("hidden", &name) && !named.contains(&format!("hidden/{name}")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes progress.json atomically.
pub(super) fn save_progress(dir: &Path, progress: &Progress) -> Result<()> {
    let json = serde_json::to_vec_pretty(progress).expect("progress serialises");
    write_file(dir, PROGRESS_FILE, &json).map(|_| ())
}

/// How a file's problem reads in a note.
fn describe(problem: FileProblem) -> &'static str {
    match problem {
        FileProblem::Missing => "is missing",
        FileProblem::Damaged => "is damaged (checksum differs)",
    }
}

/// Keeps what a previous run finished and can still be trusted (the layers' files checked
/// now, hidden states when they are about to be used).
fn resume(dir: &Path, old: Progress, fresh: Progress, notes: &mut Vec<String>) -> Progress {
    let mut progress = fresh;
    progress.runs = old.runs + 1;
    progress.times_computed = old.times_computed;
    progress.started_unix = old.started_unix;
    progress.outputs = old.outputs;
    let problems = first_problems(dir, old.layers.values().map(|r| &r.files[..]).collect());
    for ((layer, record), problem) in old.layers.into_iter().zip(problems) {
        match problem {
            None => {
                progress.layers.insert(layer, record);
            }
            Some((path, problem)) => notes.push(format!(
                "layer {layer}: {path} {}; computing the layer again",
                describe(problem)
            )),
        }
    }
    // Checked when one is about to be used (`start_point`).
    progress.hidden = old.hidden;
    let done: Vec<String> = progress.layers.keys().map(usize::to_string).collect();
    notes.push(format!(
        "resuming {}: {} layer(s) already finished{}",
        dir.display(),
        done.len(),
        if done.is_empty() {
            String::new()
        } else {
            format!(" ({})", done.join(", "))
        }
    ));
    progress
}

/// A recorded file's path and what is wrong with it.
type FileFault = (String, FileProblem);

/// Each list's first file that is missing or damaged (its path), in the lists' order; the
/// lists are checked on all cores (verifying hashes every byte: a layer's statistics reach
/// hundreds of MB, and one core took most of a re-run's time on them).
fn first_problems(dir: &Path, lists: Vec<&[FileRecord]>) -> Vec<Option<FileFault>> {
    let mut problems = vec![None; lists.len()];
    for_each_chunk_mut(&mut problems, 1, default_thread_count(), |i, slot| {
        slot[0] = lists[i]
            .iter()
            .find_map(|f| f.verify(dir).err().map(|p| (f.path.clone(), p)));
    });
    problems
}

/// Refuses a previous run of another schema or identity, saying what differs.
fn check_same_run(dir: &Path, old: &Progress, fresh: &Progress) -> Result<()> {
    if old.schema_version != PROGRESS_SCHEMA_VERSION {
        return Err(RuntimeError::InvalidRequest(format!(
            "{} has progress schema {}, this layerstream writes {}; use --restart to start over or another --out",
            dir.join(PROGRESS_FILE).display(),
            old.schema_version,
            PROGRESS_SCHEMA_VERSION
        )));
    }
    refuse_other_run(dir, "a run", old, fresh)
}

/// Refuses the folder when the run `then` (its progress or a layer's record, `what`)
/// differs from the one asked for, saying how.
fn refuse_other_run(dir: &Path, what: &str, then: &Progress, fresh: &Progress) -> Result<()> {
    let differences = identity_differences(then, fresh);
    if differences.is_empty() {
        return Ok(());
    }
    Err(RuntimeError::InvalidRequest(format!(
        "{} holds {what} that differs from this one:\n  - {}\nuse --restart to start over (deletes its finished layers) or choose another --out",
        dir.display(),
        differences.join("\n  - ")
    )))
}

/// `--restart`: deletes what the previous run recorded (nothing else); a folder with no
/// run in it must hold nothing.
fn restart(dir: &Path, previous: PreviousProgress) -> Result<()> {
    let records = read_layer_records(dir);
    match previous {
        PreviousProgress::Missing if records.is_empty() => refuse_foreign_folder(dir),
        PreviousProgress::Read(old) => remove_recorded_files(dir, Some(&old), &records),
        _ => remove_recorded_files(dir, None, &records),
    }
}

/// No readable progress.json: the finished layers are taken from their own records where
/// they belong to this run and their files verify; a folder with neither must be empty.
fn recover(
    dir: &Path,
    fresh: Progress,
    unreadable: Option<String>,
    notes: &mut Vec<String>,
) -> Result<Progress> {
    let records = read_layer_records(dir);
    let progress_path = dir.join(PROGRESS_FILE);
    if records.is_empty() {
        return match unreadable {
            None => refuse_foreign_folder(dir).map(|()| fresh),
            Some(why) => Err(RuntimeError::Checkpoint {
                path: progress_path,
                message: format!(
                    "cannot be read ({why}) and no layer has a record in layers/ to recover from; use --restart to start over"
                ),
            }),
        };
    }
    for record in records.values() {
        let what = format!("layers of a run (layer {}'s record)", record.layer);
        refuse_other_run(dir, &what, &record.as_progress(&fresh), &fresh)?;
    }
    notes.push(match &unreadable {
        Some(why) => format!(
            "{} cannot be read ({why}); recovering the finished layers from their records in layers/",
            progress_path.display()
        ),
        None => format!(
            "{} is missing; recovering the finished layers from their records in layers/",
            progress_path.display()
        ),
    });
    let mut old = fresh.clone();
    for (layer, record) in records {
        old.layers.insert(layer, record.record);
        old.times_computed.insert(layer, record.times_computed);
    }
    Ok(resume(dir, old, fresh, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked on several threads, each list's first bad file comes back at its own index.
    #[test]
    fn first_problems_keeps_the_lists_order() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<FileRecord> = (0..6)
            .map(|i| write_file(dir.path(), &format!("f{i}"), &[i as u8; 100]).unwrap())
            .collect();
        std::fs::write(dir.path().join("f1"), [9u8; 100]).unwrap();
        std::fs::remove_file(dir.path().join("f4")).unwrap();
        let lists: Vec<&[FileRecord]> = vec![
            &records[0..1],
            &records[0..2],
            &records[2..4],
            &records[3..5],
            &[],
            &records[4..6],
        ];
        let problems = first_problems(dir.path(), lists);
        assert_eq!(
            problems,
            [
                None,
                Some(("f1".into(), FileProblem::Damaged)),
                None,
                Some(("f4".into(), FileProblem::Missing)),
                None,
                Some(("f4".into(), FileProblem::Missing)),
            ]
        );
    }
}
