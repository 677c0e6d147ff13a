//! `--per-record` data for `analyze` and `score`: each record (a .jsonl line, a .parquet row,
//! a .txt line with `--txt-lines`) one sequence of its own length, cut at `--max-length`.

use super::Workload;
use super::score_records::{PreparedRecord, RecordFields, prepare};
use crate::args::{RecordArgs, WorkloadArgs};
use crate::chat_template::ChatTemplate;
use anyhow::{Result, bail};
use layerstream_runtime::analysis::report::ReportRecords;
use layerstream_runtime::checkpoint::records_fingerprint;
use layerstream_runtime::data::{PackedTokens, TextTokenizer, read_records};
use layerstream_runtime::{Model, Sequences};
use std::path::PathBuf;

/// The records of `--data`, as tokens.
pub struct RecordData {
    /// The data file (or the embedded text).
    pub path: PathBuf,
    /// `--max-length` as applied.
    pub max_length: usize,
    /// Every record, in input order.
    pub prepared: Vec<PreparedRecord>,
}

impl RecordData {
    /// The records as the workload's sequences and their token ids, one after the other.
    pub fn sequences(&self) -> (Sequences, Vec<u32>) {
        let rows = Sequences::from_lengths(self.prepared.iter().map(|r| r.tokens.len()));
        let token_ids = self
            .prepared
            .iter()
            .flat_map(|r| r.tokens.iter().copied())
            .collect();
        (rows, token_ids)
    }
}

/// Reads and tokenizes the records of `--data`; empty data, a record that cannot be read
/// and a `--max-length` above the model's are errors.
pub fn read_prepared(
    model: &Model,
    workload: &WorkloadArgs,
    records: &RecordArgs,
    fields: &RecordFields,
    template: Option<&ChatTemplate>,
    tokenizer: &TextTokenizer,
) -> Result<RecordData> {
    let max = model.spec.max_position_embeddings;
    let max_length = records.max_length.unwrap_or(max);
    if max_length > max {
        bail!("--max-length {max_length} is above the model's max_position_embeddings {max}");
    }
    let path = match &workload.data {
        Some(path) => path.clone(),
        None => crate::embedded::default_data_file()?,
    };
    let read = read_records(&path, records.txt_lines)?;
    if read.is_empty() {
        bail!(
            "{}: no records (empty data); --per-record takes each .jsonl line, .parquet row, or .txt line with --txt-lines",
            path.display()
        );
    }
    let prepared = read
        .iter()
        .map(|r| prepare(r, fields, tokenizer, template, max_length))
        .collect::<Result<_>>()?;
    Ok(RecordData {
        path,
        max_length,
        prepared,
    })
}

/// `analyze --per-record`'s workload: every record's text (`--text-field`) as one sequence,
/// the tokenizer's prefix first, never packed or padded.
pub fn record_workload(
    model: &Model,
    workload: &WorkloadArgs,
    records: &RecordArgs,
) -> Result<Workload> {
    if workload.shard.is_some() {
        bail!("--per-record with --shard is not supported yet; analyse the records in one run");
    }
    let tokenizer = TextTokenizer::load(&model.dir, &model.config)?;
    let fields = RecordFields {
        text: &workload.text_field,
        prompt: None,
        completion: None,
        id: None,
    };
    let data = read_prepared(model, workload, records, &fields, None, &tokenizer)?;
    let (rows, token_ids) = data.sequences();
    let truncated = data.prepared.iter().filter(|r| r.truncated).count();
    eprintln!(
        "{} records ({} tokens, {}-{} each{}) from {}",
        rows.count(),
        rows.tokens(),
        rows.shortest(),
        rows.longest(),
        match truncated {
            0 => String::new(),
            n => format!(", {n} cut at --max-length {}", data.max_length),
        },
        data.path.display()
    );
    Ok(Workload {
        data_fingerprint: records_fingerprint(&token_ids, &rows),
        packed: PackedTokens {
            token_ids,
            num_sequences: rows.count(),
            seq_len: rows.longest(),
            documents_used: rows.count(),
        },
        records: Some(ReportRecords {
            tokens: rows.tokens(),
            shortest: rows.shortest(),
            longest: rows.longest(),
            truncated,
            max_length: data.max_length,
        }),
        rows,
        data_name: data.path.display().to_string(),
        shard: None,
    })
}
