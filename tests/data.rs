//! Data files and packing: every format, the BOS rule, the error for too little text.

use layerstream_runtime::Model;
use layerstream_runtime::data::{TextTokenizer, pack_documents};
use layerstream_tests::fixture_model;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::Path;
use std::sync::Arc;

fn tokenizer(fixture: &str) -> TextTokenizer {
    let model = Model::open(&fixture_model(fixture)).unwrap();
    TextTokenizer::load(&model.dir, &model.config).unwrap()
}

const DOCS: [&str; 3] = [
    "Ownership is a set of rules that govern how a Rust program manages memory.",
    "Every value has an owner, and there can only be one owner at a time.",
    "When the owner goes out of scope, the value will be dropped.",
];

fn write_parquet(path: &Path, column: &str, docs: &[&str]) {
    let schema = Arc::new(
        parse_message_type(&format!(
            "message doc {{ required binary id (UTF8); required binary {column} (UTF8); }}"
        ))
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut group = writer.next_row_group().unwrap();
    let columns: [Vec<ByteArray>; 2] = [
        (0..docs.len())
            .map(|i| ByteArray::from(format!("doc-{i}").as_str()))
            .collect(),
        docs.iter().map(|d| ByteArray::from(*d)).collect(),
    ];
    for values in &columns {
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(values, None, None)
            .unwrap();
        col.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

/// What packing must give: each doc's tokens then EOS, prefix before every sequence.
fn expected_packing(tok: &TextTokenizer, docs: &[&str], n: usize, t: usize) -> Vec<u32> {
    let mut stream = Vec::new();
    for doc in docs {
        stream.extend(tok.encode(doc).unwrap());
        stream.push(tok.eos_id);
    }
    let per = t - tok.sequence_prefix.len();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.extend(&tok.sequence_prefix);
        ids.extend(&stream[i * per..(i + 1) * per]);
    }
    ids
}

#[test]
fn jsonl_and_parquet_give_the_same_workload() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("docs.jsonl");
    let body: String = DOCS
        .iter()
        .map(|d| format!("{{\"body\": {}}}\n\n", serde_json::to_string(d).unwrap()))
        .collect();
    std::fs::write(&jsonl, body).unwrap();
    let parquet = dir.path().join("docs.parquet");
    write_parquet(&parquet, "body", &DOCS);
    for fixture in ["llama3", "qwen3"] {
        let tok = tokenizer(fixture);
        let from_jsonl = pack_documents(&jsonl, "body", &tok, 2, 24).unwrap();
        let from_parquet = pack_documents(&parquet, "body", &tok, 2, 24).unwrap();
        assert_eq!(from_jsonl, from_parquet, "{fixture}");
        assert_eq!(
            from_jsonl.token_ids,
            expected_packing(&tok, &DOCS, 2, 24),
            "{fixture}"
        );
    }
}

#[test]
fn llama_style_tokenizers_start_every_sequence_with_bos_and_qwen_style_do_not() {
    let llama = tokenizer("llama3");
    let qwen = tokenizer("qwen2");
    assert_eq!(llama.sequence_prefix.len(), 1);
    assert!(qwen.sequence_prefix.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("book.txt");
    std::fs::write(&txt, DOCS.join("\n\n")).unwrap();
    let packed = pack_documents(&txt, "text", &llama, 3, 10).unwrap();
    for sequence in packed.token_ids.chunks(10) {
        assert_eq!(sequence[0], llama.sequence_prefix[0]);
    }
    // A .txt file is one document: no end-of-text token inside it.
    let packed = pack_documents(&txt, "text", &qwen, 2, 20).unwrap();
    assert!(!packed.token_ids.contains(&qwen.eos_id));
    assert_eq!(packed.documents_used, 1);
}

#[test]
fn a_long_text_is_tokenized_by_prefix_with_the_same_tokens() {
    let tok = tokenizer("olmo2");
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("long.txt");
    let text = DOCS.join(" ").repeat(2000); // ~400 KB, far more than needed
    std::fs::write(&txt, &text).unwrap();
    let packed = pack_documents(&txt, "text", &tok, 4, 64).unwrap();
    let whole = tok.encode(&text).unwrap();
    assert_eq!(packed.token_ids, whole[..256].to_vec());
}

#[test]
fn too_little_text_says_how_many_tokens_there_were() {
    let tok = tokenizer("qwen3");
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("short.txt");
    std::fs::write(&txt, DOCS[0]).unwrap();
    let available = tok.encode(DOCS[0]).unwrap().len() + 1;
    let err = pack_documents(&txt, "text", &tok, 4, 64)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("gave {available} tokens")), "{err}");
    assert!(
        err.contains("need 256") && err.contains("short.txt"),
        "{err}"
    );
}

#[test]
fn malformed_data_is_named_with_line_or_column() {
    let tok = tokenizer("qwen3");
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 4] = [
        (
            "a.jsonl",
            "{\"text\": \"ok\"}\n{\"txt\": \"x\"}\n",
            "line 2: no field \"text\" (fields: txt)",
        ),
        (
            "b.jsonl",
            "{\"text\": \"ok\"}\nnot json\n",
            "line 2: not valid JSON",
        ),
        ("c.jsonl", "{\"text\": 5}\n", "line 1: field \"text\" is 5"),
        ("d.csv", "text\nhello\n", "unknown data format"),
    ];
    for (name, body, message) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let err = pack_documents(&path, "text", &tok, 1, 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message) && err.contains(name), "{name}: {err}");
    }
    let parquet = dir.path().join("e.parquet");
    write_parquet(&parquet, "content", &DOCS);
    let err = pack_documents(&parquet, "text", &tok, 1, 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no column \"text\" (columns: id, content)"),
        "{err}"
    );
    let not_parquet = dir.path().join("f.parquet");
    std::fs::write(&not_parquet, "plain text").unwrap();
    let err = pack_documents(&not_parquet, "text", &tok, 1, 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a readable parquet file"), "{err}");
}

#[test]
fn empty_data_files_are_refused() {
    let tok = tokenizer("llama2");
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("e.txt", ""),
        ("w.txt", " \n\n "),
        ("e.jsonl", "\n"),
        ("blank.jsonl", "{\"text\": \"\"}\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let err = pack_documents(&path, "text", &tok, 1, 8)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has no text") && err.contains(name),
            "{name}: {err}"
        );
    }
    let parquet = dir.path().join("empty.parquet");
    write_parquet(&parquet, "text", &[]);
    let err = pack_documents(&parquet, "text", &tok, 1, 8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no text"), "{err}");
}
