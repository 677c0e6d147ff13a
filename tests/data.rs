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

/// A long text encoded in pieces on several threads gives the tokens of encoding it whole,
/// for every fixture's tokenizer and the embedded default's; the byte-level BPE ones are cut
/// (the check around each cut keeps them exact), SentencePiece ones that prefix every text
/// may keep their text whole.
#[test]
fn a_long_text_encoded_in_pieces_gives_the_whole_texts_tokens() {
    use layerstream_runtime::data::parallel_encode::encode_in_pieces;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("cli/assets/default-data.txt")).unwrap();
    // Blank lines, runs of spaces and a long line without breaks, at piece edges too.
    let text = format!(
        "{}\n\n   \n{}\n{}",
        &text[..200_000],
        "x".repeat(70_000),
        &text[200_000..]
    );
    let mut models: Vec<std::path::PathBuf> = layerstream_tests::FIXTURES
        .iter()
        .map(|f| fixture_model(f))
        .collect();
    models.push(root.join("cli/assets/default-model"));
    let mut cut_somewhere = 0;
    for dir in models {
        let model = Model::open(&dir).unwrap();
        let tokenizer = TextTokenizer::load(&model.dir, &model.config).unwrap();
        let whole = tokenizer.encode(&text).unwrap();
        let pieces = encode_in_pieces(&tokenizer, &text, 3, 16 << 10).unwrap();
        assert!(pieces.ids == whole, "{}: tokens differ", dir.display());
        eprintln!("{}: {} cuts", dir.display(), pieces.cuts);
        if pieces.cuts > 10 {
            cut_somewhere += 1;
        }
    }
    assert!(
        cut_somewhere >= 2,
        "byte-level tokenizers are cut: {cut_somewhere}"
    );
}

/// A tokenizer that prefixes every text it encodes (SentencePiece's `▁`, prepended always)
/// and does not split at line breaks: encoding two sides of a cut apart gives other tokens,
/// so the check keeps the text whole and the tokens are the whole text's.
#[test]
fn a_tokenizer_that_prefixes_every_text_is_not_cut() {
    use layerstream_runtime::data::parallel_encode::encode_in_pieces;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("cli/assets/default-data.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root.join("cli/assets/default-model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let first_free = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .max()
        .unwrap()
        + 1;
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), first_free.into());
    for word in text.split(' ').take(5000) {
        let next = first_free + vocab.len() as u64;
        vocab.entry(format!("▁{word}")).or_insert(next.into());
    }
    json["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    json["model"] = serde_json::json!({"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"});
    json["decoder"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    let model = Model::open(dir.path()).unwrap();
    let tokenizer = TextTokenizer::load(&model.dir, &model.config).unwrap();
    let whole = tokenizer.encode(&text).unwrap();
    let pieces = encode_in_pieces(&tokenizer, &text, 3, 16 << 10).unwrap();
    assert_eq!(pieces.cuts, 0, "every cut changes this tokenizer's tokens");
    assert!(pieces.ids == whole);
    // Without the check, the pieces' tokens would differ.
    let cut = 16_384 + text[16_384..].find('\n').unwrap();
    let mut apart = tokenizer.encode(&text[..cut]).unwrap();
    apart.extend(tokenizer.encode(&text[cut..]).unwrap());
    assert!(apart != whole, "a cut would change the tokens");
}

/// Documents encoded in batches on all cores give the stream of encoding them one after the
/// other (`doc EOS doc EOS ...`), over several batches and with a document too long to batch.
#[test]
fn batched_documents_pack_as_one_after_the_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("cli/assets/default-data.txt")).unwrap();
    let mut docs: Vec<String> = Vec::new();
    for round in 0..12 {
        docs.extend(text.split("\n\n").map(|p| format!("{round} {p}")));
        if round == 5 {
            docs.push(text.repeat(3)); // over 1 MiB: encoded alone
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let tokenizer = tokenizer("llama3");
    // One after the other, as the definition says.
    let encoded: Vec<Vec<u32>> = docs
        .iter()
        .filter(|d| !d.trim().is_empty())
        .map(|d| tokenizer.encode(d).unwrap())
        .collect();
    let prefix = &tokenizer.sequence_prefix;
    let total: usize = encoded.iter().map(|e| e.len() + 1).sum();
    // Most of the data: every batch but the last and the long document are needed.
    let seq_len = 2048;
    let sequences = total * 9 / 10 / (seq_len - prefix.len());
    let packed = pack_documents(&path, "text", &tokenizer, sequences, seq_len).unwrap();
    let needed = sequences * (seq_len - prefix.len());
    let (mut stream, mut used) = (Vec::new(), 0);
    for ids in encoded {
        stream.extend(ids);
        stream.push(tokenizer.eos_id);
        used += 1;
        if stream.len() >= needed {
            break;
        }
    }
    assert!(
        used > docs.len() / 2,
        "the batches and the long document are reached"
    );
    let expect: Vec<u32> = stream[..needed]
        .chunks_exact(seq_len - prefix.len())
        .flat_map(|c| prefix.iter().chain(c).copied().collect::<Vec<_>>())
        .collect();
    assert_eq!(packed.documents_used, used);
    assert!(packed.token_ids == expect, "token ids differ");
}
