//! Data: documents from txt / jsonl / parquet, the model's tokenizer, and packing into
//! fixed-length sequences; or records, one sequence each (`--per-record`).

pub mod documents;
pub mod packing;
pub mod parallel_encode;
pub mod records;
pub mod sources;
pub mod tokenizer;

pub use documents::{DataFormat, for_each_document};
pub use packing::{PackedTokens, pack_documents};
pub use records::{Record, read_records};
pub use sources::DataSource;
pub use tokenizer::TextTokenizer;
